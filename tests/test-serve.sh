#!/bin/sh
# test-serve.sh - `dexec serve` as a client sees it, with real workers on
# free loopback ports (port 0, the port read from the server's first line):
# every endpoint and error status with its body and headers, server-sent
# progress, the access log, queue full (429), a client that hangs up
# freeing its queue slot, the deadline (504), a bearer token on a
# non-loopback listener, a worker killed during a request (recovered: the
# request completes, the server stays ready, /metrics counts the death and
# the restart; under a stream, said by a restart event) and SIGTERM
# draining in-flight requests; the ranks kept
# busy: the images of one call spread over the ranks, a short request
# completes on the free rank while a long one runs, and an image's queue
# time counts from its submission.
set -u
cli=${DEXEC_CLI:?run me from make check}
command -v curl >/dev/null || { echo "SKIP: curl is not installed (apt-get install curl)"; exit 77; }
command -v python3 >/dev/null || { echo "SKIP: python3 is not installed"; exit 77; }
. "$(dirname "$0")/serve-lib.sh"
serve_setup test-serve

# req NAME CURL-ARGS...: $tmp/NAME.body, $tmp/NAME.hdr; prints the status.
req() {
    n=$1
    shift
    curl -s -o "$tmp/$n.body" -D "$tmp/$n.hdr" -w '%{http_code}' "$@"
}

expect_status() { # name got want
    [ "$2" = "$3" ] || fail "$1: status $2, expected $3: $(head -c 400 "$tmp/$1.body" 2>/dev/null)"
}
expect_body() { # name text
    grep -F -- "$2" "$tmp/$1.body" >/dev/null || fail "$1: body lacks: $2 (body: $(head -c 400 "$tmp/$1.body"))"
}
expect_hdr() { # name text (case-insensitive)
    tr -d '\r' <"$tmp/$1.hdr" | grep -i -F -- "$2" >/dev/null || fail "$1: headers lack: $2"
}
metric() { # name: its value in /metrics
    curl -s "$url/metrics" | sed -n "s/^$1 //p"
}

gen="/v1/images/generations"

# ---- 1. endpoints, bodies and headers (2 ranks) -----------------------------
serve_start a --num-gpus 2 --set serve.max_body_bytes=1024 --set serve.max_prompt_bytes=64 \
    --set serve.max_images=4
# a second server on the same port: said at once, before any worker is
# started (it was said after the workers had loaded the model), exit 1
hostport=${url#http://}
"$cli" serve -l "$hostport" >"$tmp/busy.out" 2>"$tmp/busy.err"
rc=$?
[ "$rc" -eq 1 ] || fail "serve on a port in use: exit status $rc, expected 1"
grep -F "dexec serve: cannot listen on $hostport: Address already in use (is another server using the port?)" \
    "$tmp/busy.err" >/dev/null || fail "serve on a port in use: $(cat "$tmp/busy.err")"
! grep -F 'worker(s) ready' "$tmp/busy.err" >/dev/null ||
    fail "serve on a port in use started its workers first: $(cat "$tmp/busy.err")"
[ ! -s "$tmp/busy.out" ] || fail "serve on a port in use printed: $(cat "$tmp/busy.out")"
st=$(req health "$url/health" -H 'X-Request-Id: abc-1')
expect_status health "$st" 200
expect_body health '{"status":"ok"}'
expect_hdr health 'Content-Type: application/json'
expect_hdr health 'X-Request-Id: abc-1'
st=$(req ready "$url/ready")
expect_status ready "$st" 200
expect_body ready '{"status":"ready","ranks":2,"backend":"mp '
st=$(req models "$url/v1/models")
expect_status models "$st" 200
expect_body models '{"object":"list","data":[{"id":"fashion-dit","object":"model"'
st=$(req page "$url/")
expect_status page "$st" 200
expect_hdr page 'Content-Type: text/html; charset=utf-8'
expect_body page '<title>dexec serve</title>'
grep -E '(src|href)="https?:' "$tmp/page.body" >/dev/null && fail "page: refers to an external asset"

# idle ranks for a while: an image's queue stage (below) counts from its
# submission, not from when its rank last went idle
sleep 2

st=$(req ok -X POST "$url$gen" -H 'Content-Type: application/json' \
    -d '{"prompt":"sneaker","n":2,"seed":7,"num_inference_steps":2,"response_format":"b64_json","model":"fashion-dit"}')
expect_status ok "$st" 200
expect_hdr ok 'Content-Type: application/json'
python3 - "$tmp/ok.body" <<'PY' || fail "ok: the images are not the PNGs asked for"
import base64, json, struct, sys
r = json.load(open(sys.argv[1]))
assert isinstance(r['created'], int), r
assert [d['seed'] for d in r['data']] == [7, 8], r
# the two images of one call spread over the two idle ranks
assert sorted(d['rank'] for d in r['data']) == [0, 1], [d['rank'] for d in r['data']]
for d in r['data']:
    png = base64.b64decode(d['b64_json'])
    assert png[:8] == b'\x89PNG\r\n\x1a\n'
    w, h = struct.unpack('>II', png[16:24])
    assert (w, h) == (28, 28), (w, h)
    assert b'seed\x00' + str(d['seed']).encode() in png
    assert d['num_inference_steps'] == 2
PY

# server-sent events: progress as steps complete, each image, then done.
# Progress events carry the latest step when the stream is written: steps
# that complete between two writes are one event (a loaded machine may
# fold many steps, or all of an image's, into one write), never out of
# order, never after the image.
curl -s -N -X POST "$url$gen" -H 'Accept: text/event-stream' \
    -d '{"prompt":"sneaker","n":2,"seed":1,"num_inference_steps":40}' >"$tmp/sse.body"
for e in 'event: progress' 'event: image' 'data: {"index":0,"b64_json":"iVBOR' \
    'data: {"index":1,"b64_json":"iVBOR' 'event: done' '"images":2,"errors":0'; do
    expect_body sse "$e"
done
python3 - "$tmp/sse.body" <<'PY' || fail "sse: progress events out of order or after the image"
import json, sys
events = [b.split('\n') for b in open(sys.argv[1]).read().strip().split('\n\n')]
last, imaged = {}, set()
for ev in events:
    name = ev[0][len('event: '):]
    data = json.loads(ev[1][len('data: '):])
    if name == 'progress':
        i = data['index']
        assert i not in imaged, ('progress after the image', data)
        assert data['total_steps'] == 40 and 1 <= data['step'] <= 40, data
        assert data['step'] > last.get(i, 0), ('step went back', data)
        last[i] = data['step']
    elif name == 'image':
        imaged.add(data['index'])
assert imaged == {0, 1}, imaged
PY

# each refusal: status, the OpenAI error object naming the field
check_error() { # name status body-text curl-args...
    n=$1 want=$2 text=$3
    shift 3
    st=$(req "$n" "$@")
    expect_status "$n" "$st" "$want"
    expect_body "$n" "$text"
    expect_hdr "$n" 'Content-Type: application/json'
}
check_error e_prompt 400 '{"error":{"message":"prompt is required","type":"invalid_request_error","param":"prompt","code":null}}' \
    -X POST "$url$gen" -d '{"n":1}'
check_error e_size 400 '"message":"size must be WIDTHxHEIGHT, e.g. \"32x32\", got \"big\"","type":"invalid_request_error","param":"size"' \
    -X POST "$url$gen" -d '{"prompt":"bag","size":"big"}'
check_error e_n 400 '"message":"n must be an integer in 1..4 (serve.max_images)","type":"invalid_request_error","param":"n"' \
    -X POST "$url$gen" -d '{"prompt":"bag","n":5}'
check_error e_steps 400 '"param":"num_inference_steps"' \
    -X POST "$url$gen" -d '{"prompt":"bag","num_inference_steps":0}'
check_error e_long 400 '"message":"prompt is 65 bytes, above serve.max_prompt_bytes = 64","type":"invalid_request_error","param":"prompt"' \
    -X POST "$url$gen" -d "{\"prompt\":\"$(printf '%065d' 0)\"}"
check_error e_format 400 '"param":"response_format"' \
    -X POST "$url$gen" -d '{"prompt":"bag","response_format":"url"}'
check_error e_field 400 '"message":"unknown field '"'"'colour'"'"'' \
    -X POST "$url$gen" -d '{"prompt":"bag","colour":"red"}'
check_error e_json 400 '"message":"the request body is not valid JSON: ' \
    -X POST "$url$gen" -d '{"prompt":'
check_error e_model 404 '{"error":{"message":"model '"'"'dall-e-3'"'"' not found: this server serves '"'"'fashion-dit'"'"' (GET /v1/models)","type":"invalid_request_error","param":"model","code":"model_not_found"}}' \
    -X POST "$url$gen" -d '{"prompt":"bag","model":"dall-e-3"}'
check_error e_path 404 '"message":"no such endpoint: GET /v2/x (see GET / or dexec(1))"' "$url/v2/x"
check_error e_method 405 '"code":"method_not_allowed"' -X DELETE "$url$gen"
expect_hdr e_method 'Allow: POST'
check_error e_sampler 400 '{"error":{"message":"sampler must be \"ddpm\" or \"ddim\" (DiT models) or \"euler\" or \"heun\" (SiT models; the bundled model: \"euler\"); absent or null: the model'"'"'s own","type":"invalid_request_error","param":"sampler","code":null}}' \
    -X POST "$url$gen" -d '{"prompt":"bag","sampler":"plms"}'
# a sampler of another kind of model: refused by the worker, still bad input
# naming the field; with stream the same 400, before any event (the stream
# begins once the worker has accepted the request)
kind_err='{"error":{"message":"image 0: rank 0: sampler '"'"'ddim'"'"' does not fit this model: it is dexec'"'"'s own flow-matching model, whose sampler is euler","type":"invalid_request_error","param":"sampler","code":null}}'
check_error e_sampler_kind 400 "$kind_err" \
    -X POST "$url$gen" -d '{"prompt":"bag","sampler":"ddim","num_inference_steps":1}'
check_error e_sampler_kind_sse 400 "$kind_err" \
    -X POST "$url$gen" -d '{"prompt":"bag","sampler":"ddim","num_inference_steps":1,"stream":true}'
grep -F 'event:' "$tmp/e_sampler_kind_sse.body" >/dev/null && fail "e_sampler_kind_sse: events in a refusal"
# the other refusals of the model's own checks: a size it does not serve, a
# prompt that names none of its classes; streaming or not
check_error e_size_fit_sse 400 '{"error":{"message":"image 0: rank 0: image size 48x40 (width x height) is not one this model serves: 28x28 (its metadata dexec.sizes)","type":"invalid_request_error","param":"size","code":null}}' \
    -X POST "$url$gen" -H 'Accept: text/event-stream' -d '{"prompt":"bag","size":"48x40","num_inference_steps":1}'
check_error e_class_sse 400 '"message":"image 0: rank 0: prompt '"'"'zebra'"'"' names no class of this model; known words: t-shirt/top,' \
    -X POST "$url$gen" -d '{"prompt":"zebra","num_inference_steps":1,"stream":true}'
expect_body e_class_sse '"type":"invalid_request_error","param":"prompt","code":null}}'
check_error e_class_neg 400 '"param":"negative_prompt"' \
    -X POST "$url$gen" -d '{"prompt":"bag","negative_prompt":"zebra","num_inference_steps":1}'
head -c 2000 /dev/zero | tr '\0' 'x' >"$tmp/big.json"
check_error e_body 413 '"message":"the request body is 2000 bytes, above serve.max_body_bytes = 1024"' \
    -X POST "$url$gen" --data-binary @"$tmp/big.json"

st=$(req metrics "$url/metrics")
expect_status metrics "$st" 200
expect_hdr metrics 'Content-Type: text/plain; version=0.0.4'
for m in 'dexec_serve_requests_total{path="/v1/images/generations",code="200"} 2' \
    'dexec_serve_requests_total{path="/v1/images/generations",code="400"} 14' \
    'dexec_serve_requests_total{path="/v1/images/generations",code="404"} 1' \
    'dexec_serve_queue_depth 0' 'dexec_serve_in_flight_requests 0' \
    'dexec_serve_images_total 4' 'dexec_serve_request_duration_seconds_count 2' \
    'dexec_serve_stage_duration_seconds_bucket{stage="denoise",le="+Inf"} 4' \
    'dexec_serve_stage_duration_seconds_bucket{stage="queue",le="1"} 4' \
    'dexec_serve_worker_deaths_total{rank="1"} 0' 'dexec_serve_worker_restarts_total{rank="1"} 0' \
    'dexec_serve_rank_busy_seconds_total{rank="1"}' 'dexec_serve_worker_errors_total{rank="0"} 0' \
    'dexec_serve_images_per_second' 'dexec_serve_ready 1'; do
    expect_body metrics "$m"
done
grep -E 'info serve: POST /v1/images/generations 200 [0-9.]+s id=http-[0-9]+' "$tmp/a.err" >/dev/null ||
    fail "no access log line for the generation"
grep -F 'info serve: GET /health 200' "$tmp/a.err" | grep -F 'id=abc-1' >/dev/null ||
    fail "the access log line lacks the request id"

# the model's sampler named explicitly: the same pixels as without it
st=$(req sampler_euler -X POST "$url$gen" -d '{"prompt":"bag","sampler":"euler","seed":3,"num_inference_steps":2}')
expect_status sampler_euler "$st" 200
st=$(req sampler_none -X POST "$url$gen" -d '{"prompt":"bag","seed":3,"num_inference_steps":2}')
expect_status sampler_none "$st" 200
python3 - "$tmp/sampler_euler.body" "$tmp/sampler_none.body" <<'PY' || fail "sampler euler: other pixels than the model's default"
import json, sys
a, b = (json.load(open(f))['data'][0]['b64_json'] for f in sys.argv[1:3])
assert a == b
PY

# ---- 1b. a free rank takes the next request ------------------------------------
# a long request, then a short one from another client: the short one runs
# on the other rank at once and completes while the long one still runs
req long2 -X POST "$url$gen" -H 'X-Request-Id: long-2' \
    -d '{"prompt":"bag","num_inference_steps":400}' >"$tmp/long2.st" &
long2=$!
pids="$pids $long2"
for _ in $(seq 1 300); do
    [ "$(metric dexec_serve_in_flight_requests)" = 1 ] && [ "$(metric dexec_serve_queue_depth)" = 0 ] && break
    sleep 0.1
done
st=$(req short2 -m 120 -X POST "$url$gen" -d '{"prompt":"coat","num_inference_steps":2}')
expect_status short2 "$st" 200
kill -0 "$long2" 2>/dev/null || fail "short2: the long request was done before the short one"
[ "$(metric dexec_serve_in_flight_requests)" = 1 ] ||
    fail "short2: the long request is not in flight any more when the short one is done"
wait "$long2"
expect_status long2 "$(cat "$tmp/long2.st")" 200
python3 - "$tmp/long2.body" "$tmp/short2.body" <<'PY' || fail "long2/short2: on the same rank"
import json, sys
a, b = (json.load(open(f))['data'][0]['rank'] for f in sys.argv[1:3])
assert a != b, (a, b)
PY

# ---- 2. a worker killed during a request -------------------------------------
req killed -X POST "$url$gen" -d '{"prompt":"bag","n":2,"num_inference_steps":1000}' >"$tmp/killed.st" &
cpid=$!
pids="$pids $cpid"
victim=$(pgrep -P "$pid" -f -- "--rank 1" | head -n 1)
# a worker keeps its name after re-executing itself for OpenBLAS (ps, top, journal)
[ -z "$victim" ] || [ "$(cat "/proc/$victim/comm")" = dexec-worker ] ||
    fail "rank 1's process is named '$(cat "/proc/$victim/comm")', not dexec-worker"
# both images running: each rank has begun its denoising steps
for _ in $(seq 1 300); do
    [ "$(metric dexec_serve_in_flight_requests)" = 1 ] && [ "$(metric dexec_serve_queue_depth)" = 0 ] && break
    sleep 0.1
done
if [ -z "$victim" ]; then
    fail "rank 1's worker is not a child of the server"
else
    kill -9 "$victim"
fi
wait "$cpid"
# the recovery settings (max_restarts, max_task_retries: 3 each by
# default) re-deal the lost image and restart the rank: the request
# completes and the server stays ready
expect_status killed "$(cat "$tmp/killed.st")" 200
expect_body killed '"b64_json"'
grep -E "rank 1 \(pid $victim\): worker died: killed by signal 9" "$tmp/a.err" >/dev/null ||
    fail "the death of rank 1 (pid $victim) is not logged"
st=$(req health2 "$url/health")
expect_status health2 "$st" 200
for _ in $(seq 1 300); do
    st=$(req ready2 "$url/ready")
    [ "$st" = 200 ] && break
    sleep 0.1
done
expect_status ready2 "$st" 200
metric 'dexec_serve_worker_errors_total{rank="1"}' | grep -qx 0 ||
    fail "worker_errors_total{rank=1} is not 0 (the image was recovered)"
# recovery counted: rank 1 died once and was restarted once, rank 0 never
for m in 'dexec_serve_worker_deaths_total{rank="1"} 1' 'dexec_serve_worker_restarts_total{rank="1"} 1' \
    'dexec_serve_worker_deaths_total{rank="0"} 0' 'dexec_serve_worker_restarts_total{rank="0"} 0'; do
    curl -s "$url/metrics" | grep -qxF "$m" || fail "metrics after the kill: no line $m"
done
kill -TERM "$pid"
wait "$pid" || fail "server a: exit status $? after SIGTERM, expected 0"

# ---- 3. queue full, a client hanging up, SIGTERM draining (1 rank) -----------
serve_start b --max-queued 1 --drain-grace 120
req long -X POST "$url$gen" -d '{"prompt":"bag","num_inference_steps":1000}' >"$tmp/long.st" &
long=$!
pids="$pids $long"
for _ in $(seq 1 100); do
    [ "$(metric dexec_serve_in_flight_requests)" = 1 ] && [ "$(metric dexec_serve_queue_depth)" = 0 ] && break
    sleep 0.1
done
# curl itself in the background (not a subshell), so that killing $! hangs up
curl -s -o /dev/null -X POST "$url$gen" -d '{"prompt":"bag","num_inference_steps":2}' &
queued=$!
pids="$pids $queued"
for _ in $(seq 1 100); do
    [ "$(metric dexec_serve_queue_depth)" = 1 ] && break
    sleep 0.1
done
[ "$(metric dexec_serve_queue_depth)" = 1 ] || fail "the second request is not queued"
check_error full 429 '{"error":{"message":"queue full: 1 queued + 1 new > engine.max_queued = 1: retry later","type":"rate_limit_error","param":null,"code":"queue_full"}}' \
    -X POST "$url$gen" -d '{"prompt":"bag"}'
expect_hdr full 'Retry-After: 1'
# more images than the queue can ever hold: 400 naming n, not 429 (whose
# Retry-After would have the client retry for ever)
check_error never_fits 400 '{"error":{"message":"n = 2 images can never wait together in engine.max_queued = 1: ask for at most 1, or raise engine.max_queued","type":"invalid_request_error","param":"n","code":null}}' \
    -X POST "$url$gen" -d '{"prompt":"bag","n":2}'
kill -9 "$queued" # the client hangs up: its queued image is dropped
for _ in $(seq 1 100); do
    [ "$(metric dexec_serve_queue_depth)" = 0 ] && break
    sleep 0.1
done
[ "$(metric dexec_serve_queue_depth)" = 0 ] || fail "a client that hung up kept its queue slot"
req after -X POST "$url$gen" -d '{"prompt":"bag","num_inference_steps":2}' >"$tmp/after.st" &
after=$!
pids="$pids $after"
sleep 0.5
grep -E 'POST /v1/images/generations 499 ' "$tmp/b.err" >/dev/null ||
    fail "no 499 access log line for the client that hung up"
# SIGTERM while one request runs and one waits: both finish, then exit 0
kill -TERM "$pid"
sleep 0.5
curl -s -m 5 "$url/health" >/dev/null && fail "still accepting connections while draining"
wait "$pid"
rc=$?
[ "$rc" -eq 0 ] || fail "server b: exit status $rc after SIGTERM, expected 0"
wait "$long"
wait "$after"
expect_status long "$(cat "$tmp/long.st")" 200
expect_status after "$(cat "$tmp/after.st")" 200
grep -F 'Terminated: draining' "$tmp/b.err" >/dev/null || fail "no draining log line"

# ---- 4. the deadline: 504, the rank is free again --------------------------------
serve_start c --request-timeout 1.5
t0=$(date +%s)
check_error late 504 '"message":"request late-1 passed its deadline of serve.request_timeout = 1.5 s with 1 of 1 image(s) not done","type":"server_error","param":null,"code":"timeout"' \
    -X POST "$url$gen" -H 'X-Request-Id: late-1' -d '{"prompt":"bag","num_inference_steps":1000}'
[ $(($(date +%s) - t0)) -lt 30 ] || fail "504 came after $(($(date +%s) - t0)) s"
st=$(req next -m 60 -X POST "$url$gen" -d '{"prompt":"bag","num_inference_steps":2}')
expect_status next "$st" 200
kill -TERM "$pid"
wait "$pid" || fail "server c: exit status $?"

# ---- 5. non-loopback listeners: token or --insecure ------------------------------
"$cli" serve -l 0.0.0.0:0 >"$tmp/d.out" 2>"$tmp/d.err"
rc=$?
# refused before anything starts: a usage error (dexec(1) EXIT STATUS)
[ "$rc" -eq 2 ] || fail "0.0.0.0 without a token: exit status $rc, expected 2"
grep -F "dexec serve: serve.listen '0.0.0.0:0' is not a loopback address: set serve.token_file (--token-file FILE) so that clients must send a bearer token, or serve.insecure = 1 (--insecure) to serve anyone who can reach it" \
    "$tmp/d.err" >/dev/null || fail "0.0.0.0 without a token: message: $(cat "$tmp/d.err")"
echo 's3cret-token' >"$tmp/token"
chmod 644 "$tmp/token"
"$cli" serve -l 0.0.0.0:0 --token-file "$tmp/token" >"$tmp/d.out" 2>"$tmp/d.err"
[ $? -eq 2 ] && grep -F "dexec serve: serve.token_file: " "$tmp/d.err" >/dev/null ||
    fail "a token file readable by others was accepted: $(cat "$tmp/d.err")"
chmod 600 "$tmp/token"
"$cli" serve -l 0.0.0.0:0 --token-file "$tmp/token" >"$tmp/d.out" 2>"$tmp/d.err" &
pid=$!
pids="$pids $pid"
port=
for _ in $(seq 1 600); do
    port=$(sed -n 's|.*listening on http://0.0.0.0:\([0-9]*\)/$|\1|p' "$tmp/d.out")
    [ -n "$port" ] && break
    sleep 0.1
done
url=http://127.0.0.1:$port
check_error noauth 401 '{"error":{"message":"missing bearer token: send Authorization: Bearer TOKEN with the token of serve.token_file","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}' \
    "$url/v1/models"
expect_hdr noauth 'WWW-Authenticate: Bearer'
check_error badauth 401 '"message":"wrong bearer token: send the token of serve.token_file"' \
    -X POST "$url$gen" -H 'Authorization: Bearer s3cret-tokeN' -d '{"prompt":"bag"}'
check_error badmetrics 401 '"code":"invalid_api_key"' "$url/metrics"
st=$(req auth "$url/v1/models" -H 'Authorization: Bearer s3cret-token')
expect_status auth "$st" 200
st=$(req authgen -X POST "$url$gen" -H 'Authorization: Bearer s3cret-token' \
    -d '{"prompt":"bag","num_inference_steps":2}')
expect_status authgen "$st" 200
st=$(req openhealth "$url/health")
expect_status openhealth "$st" 200
kill -TERM "$pid"
wait "$pid" || fail "server d: exit status $?"
"$cli" serve -l 0.0.0.0:0 --insecure >"$tmp/e.out" 2>"$tmp/e.err" &
pid=$!
pids="$pids $pid"
for _ in $(seq 1 600); do
    grep -q listening "$tmp/e.out" && break
    sleep 0.1
done
grep -F "warn serve: listening on 0.0.0.0:0 without a token (serve.insecure = 1): anyone who can reach it can generate images and read its metrics" \
    "$tmp/e.err" >/dev/null || fail "--insecure: no warning: $(cat "$tmp/e.err")"
kill -TERM "$pid"
wait "$pid" || fail "server e: exit status $?"

# guidance 1 on a cfg pair is bad input: 400 naming the field and the
# reason, refused before any worker sees it (it was once a 500 counted as
# a worker error); no worker error is counted, under any rank label
printf 'parallel = { cfg = 2; };\n' >"$tmp/cfg2.conf"
serve_start f -c "$tmp/cfg2.conf" --num-gpus 2
st=$(req cfg1 -X POST "$url$gen" -d '{"prompt":"bag","guidance_scale":1,"num_inference_steps":2}')
expect_status cfg1 "$st" 400
grep -F '{"error":{"message":"guidance_scale 1 turns classifier-free guidance off, and this server'"'"'s ranks compute the two branches of guidance in pairs (parallel.cfg = 2): ask for another guidance_scale, or leave it out for the model'"'"'s default","type":"invalid_request_error","param":"guidance_scale","code":null}}' \
    "$tmp/cfg1.body" >/dev/null || fail "cfg1: message: $(cat "$tmp/cfg1.body")"
# a request the model refuses is bad input on a parallel group too (the
# group did not fail: 400 naming the field, not 500), streaming or not
for body in '{"prompt":"bag","sampler":"ddim","num_inference_steps":1}' \
    '{"prompt":"bag","sampler":"ddim","num_inference_steps":1,"stream":true}'; do
    check_error cfg_sampler 400 '{"error":{"message":"image 0: rank 0: sampler '"'"'ddim'"'"' does not fit this model: it is dexec'"'"'s own flow-matching model, whose sampler is euler","type":"invalid_request_error","param":"sampler","code":null}}' \
        -X POST "$url$gen" -d "$body"
done
curl -s "$url/metrics" | grep -q '^dexec_serve_worker_errors_total{rank="unknown' &&
    fail "/metrics: a refused request counted as a worker error"
st=$(req cfg3 -X POST "$url$gen" -d '{"prompt":"bag","guidance_scale":3,"num_inference_steps":2}')
expect_status cfg3 "$st" 200
kill -TERM "$pid"
wait "$pid" || fail "server f: exit status $?"

# ---- 7. a restart under a stream (ray_actor): said, not hidden ---------------
# the actor hosts every rank; killed mid-request it is started again and
# the image computed again from step 1: a restart event says so before the
# progress that counts from step 1 again
serve_start g --backend ray_actor --num-gpus 1
curl -s -N -X POST "$url$gen" -d '{"prompt":"bag","num_inference_steps":1000,"stream":true}' \
    >"$tmp/rs.body" &
cpid=$!
pids="$pids $cpid"
for _ in $(seq 1 300); do
    grep -q '"step":[1-9]' "$tmp/rs.body" 2>/dev/null && break
    sleep 0.1
done
actor=$(pgrep -P "$pid" dexec-worker | head -n 1)
if [ -z "$actor" ]; then
    fail "restart: the actor is not a child of the server"
else
    kill -9 "$actor"
fi
wait "$cpid"
python3 - "$tmp/rs.body" <<'PY' || fail "restart: the stream does not say the restart: $(head -c 600 "$tmp/rs.body")"
import json, sys
events = [b.split('\n') for b in open(sys.argv[1]).read().strip().split('\n\n')]
names = [ev[0][len('event: '):] for ev in events]
datas = [json.loads(ev[1][len('data: '):]) for ev in events]
assert names[-2:] == ['image', 'done'], names[-3:]
r = names.index('restart')
assert names.count('restart') == 1, names
lost = datas[r]['lost_at_step']
assert datas[r]['index'] == 0 and datas[r]['attempt'] == 2 and lost >= 1, datas[r]
before = [d['step'] for n, d in zip(names[:r], datas[:r]) if n == 'progress']
after = [d['step'] for n, d in zip(names[r:], datas[r:]) if n == 'progress']
# steps rise within each computation (progress carries the latest step)
assert before and before[-1] <= lost and before == sorted(before), (lost, before[-3:])
assert after and after == sorted(after) and after[-1] == 1000, after[-3:]
PY
kill -TERM "$pid"
wait "$pid" || fail "server g: exit status $?"

exit $status
