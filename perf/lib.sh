# Shared by the perf scripts (sourced, not run).

# wait_port PORT: waits (at most 10 s) until something accepts connections on 127.0.0.1:PORT;
# returns 1 if nothing does.
wait_port() {
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}
