/* The raw relay's loop (bench/worker.py relay_loop) in C: a ROUTER that forwards each
 * frame to every subscriber as it came, with nothing decoded. What two libzmq hops and
 * a middle process cost when no Python runs in the middle: the floor for any broker
 * built on ZeroMQ here. Subscribers say "sub" (msgpack) and are answered "ok".
 *
 * Build: cc -O2 -o c_relay c_relay.c -lzmq   (make bench does it; Debian: libzmq3-dev)
 * Run: c_relay ENDPOINT, or c_relay --version for the libzmq it runs on. */
#include <stdio.h>
#include <string.h>
#include <zmq.h>

#define MAX_SUBSCRIBERS 64

static const char SUB[] = "\xa3sub"; /* msgpack of the string "sub" */

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: c_relay ENDPOINT | --version\n");
        return 2;
    }
    if (strcmp(argv[1], "--version") == 0) {
        int major, minor, patch;
        zmq_version(&major, &minor, &patch);
        printf("%d.%d.%d\n", major, minor, patch);
        return 0;
    }
    void *ctx = zmq_ctx_new();
    void *router = zmq_socket(ctx, ZMQ_ROUTER);
    if (zmq_bind(router, argv[1]) != 0) {
        fprintf(stderr, "c_relay: cannot bind %s: %s\n", argv[1], zmq_strerror(zmq_errno()));
        return 1;
    }
    char endpoint[256];
    size_t size = sizeof endpoint;
    zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, endpoint, &size);
    printf("ready %s\n", endpoint);
    fflush(stdout);

    zmq_msg_t subscribers[MAX_SUBSCRIBERS];
    int count = 0;
    for (;;) {
        zmq_msg_t peer, frame;
        zmq_msg_init(&peer);
        zmq_msg_init(&frame);
        if (zmq_msg_recv(&peer, router, 0) < 0 || zmq_msg_recv(&frame, router, 0) < 0)
            break;
        if (zmq_msg_size(&frame) == sizeof SUB - 1
                && memcmp(zmq_msg_data(&frame), SUB, sizeof SUB - 1) == 0) {
            if (count < MAX_SUBSCRIBERS) {
                zmq_msg_init(&subscribers[count]);
                zmq_msg_copy(&subscribers[count++], &peer);
            }
            zmq_send(router, zmq_msg_data(&peer), zmq_msg_size(&peer), ZMQ_SNDMORE);
            zmq_send(router, "ok", 2, 0);
        } else {
            for (int i = 0; i < count; i++) {
                zmq_msg_t out;
                zmq_msg_init(&out);
                zmq_msg_copy(&out, &frame);
                zmq_send(router, zmq_msg_data(&subscribers[i]), zmq_msg_size(&subscribers[i]),
                         ZMQ_SNDMORE);
                zmq_msg_send(&out, router, 0);
            }
        }
        zmq_msg_close(&peer);
        zmq_msg_close(&frame);
    }
    return 0;
}
