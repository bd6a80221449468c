/*
 * counter_c: a Plugboard plugin in C, written from protocol/PROTOCOL.md alone.
 *
 * Every `period_ms` it adds `step` to counter_c/count. It follows another plugin's
 * integer property (config `follow`, default "scaler_js/factor") and uses its value as
 * the step. It declares an int, a timestamp and a duration, answers init and end,
 * pings when idle, prints every error reply, and reconnects after a broker restart.
 *
 * Build: make (needs libzmq and msgpack-c: Debian libzmq3-dev and libmsgpack-dev).
 */
#include <errno.h>
#include <inttypes.h>
#include <msgpack.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define DURATION_EXT 1
#define REPLY_TIMEOUT_MS 5000
#define MAX_QUEUED 256

static void *ctx, *sock;
static const char *endpoint, *name, *token;
static char follow[256] = "scaler_js/factor";
static int64_t period_ms = 500, heartbeat_ms = 2000;
static int64_t count = 0, step = 1;
static uint32_t next_msgid = 1;
static bool initialised = false, ending = false;

/* Frames that arrived while waiting for a reply, handled afterwards. */
static struct { char *data; size_t size; } queued[MAX_QUEUED];
static int nqueued = 0;
/* The bytes of the last reply: msgpack-c objects point into them, so they live until
   the next call. */
static char *reply_data = NULL;

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void pack_str(msgpack_packer *pk, const char *s) {
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static void pack_now(msgpack_packer *pk) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    msgpack_timestamp stamp = {.tv_sec = ts.tv_sec, .tv_nsec = (uint32_t)ts.tv_nsec};
    msgpack_pack_timestamp(pk, &stamp);
}

static void pack_duration_ms(msgpack_packer *pk, int64_t ms) {
    int64_t ns = ms * 1000000;
    unsigned char body[8];
    for (int i = 7; i >= 0; i--) { body[i] = (unsigned char)(ns & 0xff); ns >>= 8; }
    msgpack_pack_ext(pk, 8, DURATION_EXT);
    msgpack_pack_ext_body(pk, body, 8);
}

/* Looks a key up in a msgpack map; NULL if absent or not a map. */
static msgpack_object *get(msgpack_object *map, const char *key) {
    if (map == NULL || map->type != MSGPACK_OBJECT_MAP) return NULL;
    size_t n = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
            memcmp(k->via.str.ptr, key, n) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

static bool as_int(msgpack_object *o, int64_t *out) {
    if (o == NULL) return false;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) { *out = (int64_t)o->via.u64; return true; }
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) { *out = o->via.i64; return true; }
    return false;
}

static void send_buffer(msgpack_sbuffer *sb) {
    if (zmq_send(sock, sb->data, sb->size, 0) < 0)
        fprintf(stderr, "counter_c: send failed: %s\n", zmq_strerror(errno));
}

/* Answers a request the broker sent: an error, {"result": *result} for a call, or an
   empty map (init, end). */
static void answer(uint64_t msgid, const char *error_code, const int64_t *result) {
    msgpack_sbuffer sb; msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_int(&pk, 1);
    msgpack_pack_uint64(&pk, msgid);
    if (error_code) {
        msgpack_pack_map(&pk, 2);
        pack_str(&pk, "code"); pack_str(&pk, error_code);
        pack_str(&pk, "message"); pack_str(&pk, "counter_c does not handle this method");
        msgpack_pack_nil(&pk);
    } else if (result) {
        msgpack_pack_nil(&pk);
        msgpack_pack_map(&pk, 1);
        pack_str(&pk, "result"); msgpack_pack_int64(&pk, *result);
    } else {
        msgpack_pack_nil(&pk);
        msgpack_pack_map(&pk, 0);
    }
    send_buffer(&sb);
    msgpack_sbuffer_destroy(&sb);
}

/* Answers `call` of the one method counter_c exports, jump(by: int) -> int: adds `by`
   to the count and returns the new count. The broker has checked the parameters. */
static void on_call(uint64_t msgid, msgpack_object *params) {
    msgpack_object *method = get(params, "method");
    int64_t by;
    if (method == NULL || method->type != MSGPACK_OBJECT_STR || method->via.str.size != 4 ||
        memcmp(method->via.str.ptr, "jump", 4) != 0 ||
        !as_int(get(get(params, "params"), "by"), &by)) {
        answer(msgid, "unknown_method", NULL);
        return;
    }
    count += by;
    answer(msgid, NULL, &count);
}

static void on_changes(msgpack_object *params) {
    msgpack_object *items = get(params, "items");
    if (items == NULL || items->type != MSGPACK_OBJECT_ARRAY) return;
    for (uint32_t i = 0; i < items->via.array.size; i++) {
        msgpack_object *item = &items->via.array.ptr[i];
        int64_t value;
        if (item->type == MSGPACK_OBJECT_ARRAY && item->via.array.size >= 2 &&
            as_int(&item->via.array.ptr[1], &value) && value > 0) {
            step = value;
            fprintf(stderr, "counter_c: step is now %" PRId64 "\n", step);
        }
    }
}

/* Handles one frame that is not the reply being waited for. */
static void dispatch(const char *data, size_t size) {
    msgpack_unpacked msg;
    msgpack_unpacked_init(&msg);
    size_t off = 0;
    if (msgpack_unpack_next(&msg, data, size, &off) != MSGPACK_UNPACK_SUCCESS ||
        msg.data.type != MSGPACK_OBJECT_ARRAY || msg.data.via.array.size < 3) {
        fprintf(stderr, "counter_c: undecodable frame ignored\n");
        msgpack_unpacked_destroy(&msg);
        return;
    }
    msgpack_object *a = msg.data.via.array.ptr;
    int64_t kind = -1;
    as_int(&a[0], &kind);
    if (kind == 0 && msg.data.via.array.size >= 4 && a[2].type == MSGPACK_OBJECT_STR) {
        int64_t msgid = 0;
        as_int(&a[1], &msgid);
        const char *method = a[2].via.str.ptr;
        size_t n = a[2].via.str.size;
        if (n == 4 && memcmp(method, "init", 4) == 0) {
            msgpack_object *config = get(&a[3], "config");
            int64_t value;
            if (as_int(get(config, "period_ms"), &value) && value > 0) period_ms = value;
            msgpack_object *f = get(config, "follow");
            if (f && f->type == MSGPACK_OBJECT_STR && f->via.str.size < sizeof follow) {
                memcpy(follow, f->via.str.ptr, f->via.str.size);
                follow[f->via.str.size] = 0;
            }
            initialised = true;
            answer((uint64_t)msgid, NULL, NULL);
        } else if (n == 3 && memcmp(method, "end", 3) == 0) {
            ending = true;
            answer((uint64_t)msgid, NULL, NULL);
        } else if (n == 4 && memcmp(method, "call", 4) == 0) {
            on_call((uint64_t)msgid, &a[3]);
        } else {
            answer((uint64_t)msgid, "unknown_method", NULL);
        }
    } else if (kind == 2 && a[1].type == MSGPACK_OBJECT_STR) {
        if (a[1].via.str.size == 7 && memcmp(a[1].via.str.ptr, "changes", 7) == 0)
            on_changes(&a[2]);
    }
    msgpack_unpacked_destroy(&msg);
}

/*
 * Sends a request and waits for its reply, queueing whatever else arrives. Returns
 * true on success; `reply` then owns the unpacked response. On an error reply prints
 * the code and message; `code_out` receives the code ("timeout" when none came).
 */
typedef void (*params_fn)(msgpack_packer *pk, void *arg);

static bool call(const char *method, params_fn params, void *arg, msgpack_unpacked *reply,
                 char *code_out, size_t code_size) {
    uint32_t msgid = next_msgid++;
    msgpack_sbuffer sb; msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_int(&pk, 0);
    msgpack_pack_uint32(&pk, msgid);
    pack_str(&pk, method);
    if (params) params(&pk, arg); else msgpack_pack_map(&pk, 0);
    send_buffer(&sb);
    msgpack_sbuffer_destroy(&sb);

    int64_t deadline = now_ms() + REPLY_TIMEOUT_MS;
    while (now_ms() < deadline) {
        zmq_pollitem_t item = {sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, (long)(deadline - now_ms())) <= 0) continue;
        zmq_msg_t frame;
        zmq_msg_init(&frame);
        if (zmq_msg_recv(&frame, sock, 0) < 0) { zmq_msg_close(&frame); continue; }
        size_t size = zmq_msg_size(&frame);
        free(reply_data);
        reply_data = malloc(size ? size : 1);
        memcpy(reply_data, zmq_msg_data(&frame), size);
        const char *data = reply_data;
        msgpack_unpacked_init(reply);
        size_t off = 0;
        bool mine = false;
        if (msgpack_unpack_next(reply, data, size, &off) == MSGPACK_UNPACK_SUCCESS &&
            reply->data.type == MSGPACK_OBJECT_ARRAY && reply->data.via.array.size >= 4) {
            int64_t kind = -1, id = -1;
            as_int(&reply->data.via.array.ptr[0], &kind);
            as_int(&reply->data.via.array.ptr[1], &id);
            mine = kind == 1 && id == msgid;
        }
        if (!mine) {
            msgpack_unpacked_destroy(reply);
            if (nqueued < MAX_QUEUED) {
                queued[nqueued].data = malloc(size);
                memcpy(queued[nqueued].data, data, size);
                queued[nqueued].size = size;
                nqueued++;
            }
            zmq_msg_close(&frame);
            continue;
        }
        zmq_msg_close(&frame);  /* the reply points into reply_data, not the frame */
        msgpack_object *error = &reply->data.via.array.ptr[2];
        if (error->type == MSGPACK_OBJECT_NIL) return true;
        msgpack_object *code = get(error, "code"), *message = get(error, "message");
        if (code && code->type == MSGPACK_OBJECT_STR) {
            snprintf(code_out, code_size, "%.*s", (int)code->via.str.size, code->via.str.ptr);
            fprintf(stderr, "counter_c: %s failed: %s: %.*s\n", method, code_out,
                    message ? (int)message->via.str.size : 0,
                    message ? message->via.str.ptr : "");
        }
        msgpack_unpacked_destroy(reply);
        return false;
    }
    snprintf(code_out, code_size, "timeout");
    fprintf(stderr, "counter_c: %s: no reply within %d ms\n", method, REPLY_TIMEOUT_MS);
    return false;
}

static void drain_queue(void) {
    while (nqueued > 0) {
        char *data = queued[0].data;
        size_t size = queued[0].size;
        memmove(queued, queued + 1, sizeof queued[0] * (size_t)(--nqueued));
        dispatch(data, size);
        free(data);
    }
}

static void hello_params(msgpack_packer *pk, void *arg) {
    (void)arg;
    msgpack_pack_map(pk, token ? 5 : 4);
    pack_str(pk, "versions"); msgpack_pack_array(pk, 1); msgpack_pack_int(pk, 1);
    pack_str(pk, "role"); pack_str(pk, "plugin");
    pack_str(pk, "name"); pack_str(pk, name);
    pack_str(pk, "client"); pack_str(pk, "counter_c (libzmq + msgpack-c)");
    if (token) { pack_str(pk, "token"); pack_str(pk, token); }
}

struct declaration { const char *key; const char *type; int kind; int64_t value; };
enum { VALUE_INT, VALUE_NOW, VALUE_DURATION };

static void declare_params(msgpack_packer *pk, void *arg) {
    struct declaration *d = arg;
    char full[300];
    snprintf(full, sizeof full, "%s/%s", name, d->key);
    msgpack_pack_map(pk, 3);
    pack_str(pk, "name"); pack_str(pk, full);
    pack_str(pk, "type"); pack_str(pk, d->type);
    pack_str(pk, "value");
    if (d->kind == VALUE_NOW) pack_now(pk);
    else if (d->kind == VALUE_DURATION) pack_duration_ms(pk, d->value);
    else msgpack_pack_int64(pk, d->value);
}

static void subscribe_params(msgpack_packer *pk, void *arg) {
    (void)arg;
    msgpack_pack_map(pk, 1);
    pack_str(pk, "pattern"); pack_str(pk, follow);
}

struct int_write { const char *key; int64_t value; };

static void set_int_params(msgpack_packer *pk, void *arg) {
    struct int_write *w = arg;
    char full[300];
    snprintf(full, sizeof full, "%s/%s", name, w->key);
    msgpack_pack_map(pk, 2);
    pack_str(pk, "target"); pack_str(pk, full);
    pack_str(pk, "value"); msgpack_pack_int64(pk, w->value);
}

static void open_socket(void) {
    sock = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    /* On tcp the runtime hands out a per-launch CURVE pair (Z85 text, 40 characters). */
    const char *server_key = getenv("PLUGBOARD_SERVER_KEY");
    if (server_key && *server_key) {
        const char *public_key = getenv("PLUGBOARD_PUBLIC_KEY");
        const char *secret_key = getenv("PLUGBOARD_SECRET_KEY");
        if (!public_key || !secret_key
            || zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, server_key, 40) != 0
            || zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, public_key, 40) != 0
            || zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, secret_key, 40) != 0) {
            fprintf(stderr, "counter_c: cannot use the CURVE keys: %s\n", zmq_strerror(errno));
            exit(1);
        }
    }
    if (zmq_connect(sock, endpoint) != 0) {
        fprintf(stderr, "counter_c: cannot connect to %s: %s\n", endpoint, zmq_strerror(errno));
        exit(1);
    }
}

/* hello, wait for init, declare, subscribe: at start and after a broker restart. */
static bool start_session(void) {
    msgpack_unpacked reply;
    char code[64] = "";
    if (!call("hello", hello_params, NULL, &reply, code, sizeof code)) return false;
    int64_t hb;
    if (as_int(get(&reply.data.via.array.ptr[3], "heartbeat_ms"), &hb) && hb > 0)
        heartbeat_ms = hb;
    msgpack_unpacked_destroy(&reply);
    int64_t deadline = now_ms() + REPLY_TIMEOUT_MS;
    initialised = false;
    while (!initialised && now_ms() < deadline) {   /* the broker's init comes next */
        drain_queue();
        zmq_pollitem_t item = {sock, 0, ZMQ_POLLIN, 0};
        if (!initialised && zmq_poll(&item, 1, 100) > 0) {
            zmq_msg_t frame;
            zmq_msg_init(&frame);
            if (zmq_msg_recv(&frame, sock, 0) >= 0)
                dispatch(zmq_msg_data(&frame), zmq_msg_size(&frame));
            zmq_msg_close(&frame);
        }
    }
    struct declaration decls[] = {
        {"count", "int", VALUE_INT, count},
        {"step", "int", VALUE_INT, step},
        {"started", "timestamp", VALUE_NOW, 0},
        {"period", "duration", VALUE_DURATION, period_ms},
    };
    for (size_t i = 0; i < sizeof decls / sizeof decls[0]; i++) {
        if (!call("declare", declare_params, &decls[i], &reply, code, sizeof code))
            return false;
        msgpack_unpacked_destroy(&reply);
    }
    if (!call("subscribe", subscribe_params, NULL, &reply, code, sizeof code)) return false;
    msgpack_unpacked_destroy(&reply);
    fprintf(stderr, "counter_c: ready, following %s every %" PRId64 " ms\n", follow, period_ms);
    return true;
}

static void reconnect(void) {
    for (int attempt = 0; attempt < 60; attempt++) {
        zmq_close(sock);
        open_socket();
        if (start_session()) return;
        struct timespec pause = {0, 500 * 1000000};
        nanosleep(&pause, NULL);
    }
    fprintf(stderr, "counter_c: broker gone for good, exiting\n");
    exit(1);
}

int main(void) {
    endpoint = getenv("PLUGBOARD_ENDPOINT");
    name = getenv("PLUGBOARD_NAME");
    token = getenv("PLUGBOARD_TOKEN");
    if (!endpoint || !name) {
        fprintf(stderr, "counter_c: PLUGBOARD_ENDPOINT and PLUGBOARD_NAME must be set\n");
        return 2;
    }
    ctx = zmq_ctx_new();
    open_socket();
    if (!start_session()) reconnect();

    int64_t next_tick = now_ms() + period_ms, last_sent = now_ms();
    int64_t last_step = step;
    while (!ending) {
        drain_queue();
        if (ending) break;
        int64_t wait = next_tick - now_ms();
        zmq_pollitem_t item = {sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, wait > 0 ? (long)wait : 0) > 0) {
            zmq_msg_t frame;
            zmq_msg_init(&frame);
            if (zmq_msg_recv(&frame, sock, 0) >= 0)
                dispatch(zmq_msg_data(&frame), zmq_msg_size(&frame));
            zmq_msg_close(&frame);
            continue;
        }
        msgpack_unpacked reply;
        char code[64] = "";
        bool ok = true;
        if (step != last_step) {
            struct int_write w = {"step", step};
            ok = call("set", set_int_params, &w, &reply, code, sizeof code);
            if (ok) { msgpack_unpacked_destroy(&reply); last_step = step; }
        }
        count += step;
        struct int_write w = {"count", count};
        if (ok) ok = call("set", set_int_params, &w, &reply, code, sizeof code);
        if (ok) msgpack_unpacked_destroy(&reply);
        else if (strcmp(code, "hello_required") == 0 || strcmp(code, "timeout") == 0)
            reconnect();
        last_sent = now_ms();
        next_tick += period_ms;
        if (next_tick < now_ms()) next_tick = now_ms() + period_ms;
        (void)last_sent;  /* every tick sends, so the heartbeat is kept by the sets */
        if (period_ms > heartbeat_ms) {
            if (call("ping", NULL, NULL, &reply, code, sizeof code)) msgpack_unpacked_destroy(&reply);
        }
    }
    fprintf(stderr, "counter_c: end received, exiting\n");
    zmq_close(sock);
    zmq_ctx_term(ctx);
    return 0;
}
