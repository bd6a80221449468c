# One image for every Plugboard service: the broker, an agent, a monitor.
# The C and Node plugins are built here, as `make plugins` does on a host.
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential pkg-config make \
       libzmq3-dev libmsgpack-dev nodejs npm \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir -e '.[plugins]' && make plugins

# State (the store, logs, CURVE keys) lives in volumes, never in the image.
ENV PLUGBOARD_STATE_DIR=/state
EXPOSE 7700 8780
CMD ["plugboard", "broker", "--endpoint", "tcp://0.0.0.0:7700"]
