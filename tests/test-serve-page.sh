#!/bin/sh
# test-serve-page.sh - the page `dexec serve` answers at /, in a real
# browser: headless Chromium (driven over the DevTools protocol) loads
# /?prompt=...&auto=1, which submits the form; once the page says done its
# DOM must hold the images and the status, and a screenshot is taken (kept
# when DEXEC_TEST_SCREENSHOT names a file).
set -u
cli=${DEXEC_CLI:?run me from make check}
src=${DEXEC_TEST_SRCDIR:?run me from make check}
command -v python3 >/dev/null || { echo "SKIP: python3 is not installed"; exit 77; }
browser=
for b in chromium chromium-browser google-chrome; do
    command -v "$b" >/dev/null && { browser=$b; break; }
done
[ -n "$browser" ] || { echo "SKIP: no Chromium (apt-get install chromium)"; exit 77; }
. "$src/serve-lib.sh"
serve_setup test-serve-page
serve_start page --num-gpus 2 || exit 1

page="$url/?prompt=sneaker&n=3&steps=4&seed=5&auto=1"
shot=${DEXEC_TEST_SCREENSHOT:-$tmp/page.png}
# the DevTools protocol: open the page, wait for its "done" title, dump
# the DOM and take a screenshot
timeout 150 python3 "$src/serve_browser.py" "$browser" "$page" "dexec serve: done" "$shot" 120 \
    >"$tmp/dom.html" 2>"$tmp/browser.err" || fail "$browser via DevTools: exit status $?"
grep -Fx 'title: dexec serve: done' "$tmp/dom.html" >/dev/null || fail "the page never said done"
n=$(grep -o '<img[^>]*class="done"' "$tmp/dom.html" | wc -l)
[ "$n" -eq 3 ] || fail "the page shows $n finished image(s), expected 3"
grep -F 'data:image/png;base64,iVBOR' "$tmp/dom.html" >/dev/null || fail "no PNG image in the page"
grep -E 'done: 3 image\(s\) in [0-9.]+ s' "$tmp/dom.html" >/dev/null || fail "no done status in the page"
grep -F 'seed 7' "$tmp/dom.html" >/dev/null || fail "the third image's caption lacks its seed"
grep -F 'model: fashion-dit' "$tmp/dom.html" >/dev/null || fail "the page did not show the model"
python3 -c "import sys; d = open(sys.argv[1], 'rb').read(); assert d[:4] == b'\x89PNG' and len(d) > 5000" \
    "$shot" || fail "no screenshot written to $shot"
if [ "$status" -ne 0 ]; then
    echo "--- DOM:"; cat "$tmp/dom.html"; echo "--- browser:"; tail -20 "$tmp/browser.err"
fi
kill -TERM "$pid"
wait "$pid" || fail "server: exit status $? after SIGTERM"
pid= pids=
exit $status
