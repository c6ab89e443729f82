# The origin every benchmark script puts behind the proxies: nginx `return 200`, one worker,
# no access log, keep-alive without limit. Sourced by run.sh and instructions.sh.

# origin_nginx_conf PID_DIR PORT ERROR_LOG: the nginx.conf, on stdout.
origin_nginx_conf() {
  cat <<CONF
worker_processes 1;
daemon off;
pid $1/nginx.pid;
error_log $3 warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_timeout 120s;
    keepalive_requests 10000000;
    server {
        listen 127.0.0.1:$2;
        location / { return 200 "ok\n"; }
    }
}
CONF
}

# origin_route_toml PORT: the gateway config's upstream (the origin on PORT) and its one route.
origin_route_toml() {
  cat <<TOML
[[upstreams]]
name = "origin"
instances = ["http://127.0.0.1:$1"]
[[routes]]
prefix = "/"
upstream = "origin"
TOML
}
