#!/bin/sh
# test-doc-commands.sh - the commands shown in README.md, doc/*.md, the man
# pages (doc/*.1, doc/*.5) and contrib/*/README.md, as written:
# 1-2. every dexec, dexec-worker and dexec-model command is checked against
#    the programs of this build: the subcommand exists and every option it
#    uses is one that program's --help lists; every repository path a
#    command names (contrib/..., models/..., doc/...) exists;
# 3. every configuration file under contrib/ passes `dexec config check`;
# 4. every configuration block of these files (one that starts with
#    KEY = and elides nothing) passes `dexec config check`, and every block
#    that shows a command (dexec's programs, make, python3, curl, sbatch,
#    a script of the tree, ...) carries a doc-test marker and is
#    run here as written (real workers, a real redis-server), or is named
#    as run by another test (README.md's "Using it" by test-readme.sh,
#    contrib/slurm's by tests/slurm/slurm.sh, contrib/example-plugin's by
#    its installcheck.sh), or is listed as not run with the reason (a GPU,
#    a cluster's host names, published weights) and then checked as shell
#    and for the build paths it names. contrib/systemd's units are checked
#    by test-systemd.sh (systemd-analyze verify).
set -u
cli=${DEXEC_CLI:?run me from make check}
worker=${DEXEC_WORKER:?run me from make check}
src=${DEXEC_TOP_SRCDIR:?run me from make check}
top=${DEXEC_TOP_BUILDDIR:?run me from make check}
command -v python3 >/dev/null || { echo "SKIP: python3 not found (it extracts the commands)"; exit 77; }
tmp=$(mktemp -d /tmp/dexec-test-doc.XXXXXX) || exit 99
trap '[ -n "${KEEP:-}" ] || rm -rf "$tmp"' EXIT # replaced in 4.
status=0
fail() { echo "FAIL: $*"; status=1; }

# 1. the commands, one per line: FILE:LINE<TAB>PROGRAM<TAB>ARGS (shell words)
python3 - "$src" >"$tmp/commands" <<'PY' || exit 99
import glob, os, re, shlex, sys
src = sys.argv[1]
files = [os.path.join(src, "README.md")]
for pat in ("doc/*.md", "doc/*.1", "doc/*.5", "contrib/*/README.md"):
    files += sorted(glob.glob(os.path.join(src, pat)))
start = re.compile(r'^(?:\$ )?(?:[A-Z_]+=\S+ )*(dexec|dexec-worker|dexec-model)(?: |$)')
for path in files:
    rel = os.path.relpath(path, src)
    man = path.endswith((".1", ".5"))
    lines = open(path, encoding="utf-8").read().split("\n")
    code, block, i, prev = False, False, 0, ""
    while i < len(lines):
        raw = lines[i]
        if raw.startswith("```"):
            code = not code
        if man:
            # examples are between .nf and .fi (or .EX and .EE)
            if raw.startswith((".nf", ".EX")):
                code = True
            elif raw.startswith((".fi", ".EE")):
                code = False
            text = raw.replace("\\-", "-").replace("\\e", "\\").replace("\\(aq", "'")
            shown = code and not raw.startswith(".")
        else:
            # markdown: an indented block starts after a blank line and
            # lasts until a line that is neither blank nor indented
            text = raw
            if raw.strip() == "":
                pass
            elif raw.startswith("    "):
                block = block or prev.strip() == ""
            else:
                block = False
            shown = code or (block and raw.startswith("    "))
        prev = raw
        body = text.strip()
        # VAR=value \ on its own line: the command is on the next
        while (shown and body.endswith("\\") and re.match(r'^(?:[A-Z_]+=\S+ ?)+\\$', body)
               and i + 1 < len(lines)):
            i += 1
            body = body[:-1] + lines[i].strip()
        m = start.match(body)
        if not shown or not m or (not man and not code and "`" in body):
            i += 1
            continue
        no = i + 1
        while body.endswith("\\") and i + 1 < len(lines):
            i += 1
            nxt = lines[i]
            if man:
                nxt = nxt.replace("\\-", "-").replace("\\e", "\\").replace("\\(aq", "'")
            body = body[:-1] + " " + nxt.strip()
        i += 1
        body = body.split(" | ")[0]
        if body.startswith("$ "):
            body = body[2:]
        try:
            words = shlex.split(body, comments=True)
        except ValueError as e:
            print("%s:%d\tERROR\tnot valid shell: %s" % (rel, no, e))
            continue
        while words and re.match(r'^[A-Z_]+=', words[0]):
            words.pop(0)
        if words and words[-1] == "&":
            words.pop()
        if words:
            print("%s:%d\t%s\t%s" % (rel, no, words[0], shlex.join(words[1:])))
PY
n=$(wc -l <"$tmp/commands")
[ "$n" -ge 30 ] || fail "found only $n commands in the documentation"

# 2. each one: subcommand and options known to the program
help_of() { # program subcommand... -> the help text of the deepest that has one
    case $1 in
    dexec) bin=$cli ;;
    dexec-worker) bin=$worker ;;
    dexec-model) bin=$top/kernels/dexec-model ;;
    esac
    shift
    case "$*" in
    "config "*) "$bin" config --help 2>&1 ;;
    "") "$bin" --help 2>&1 ;;
    *) "$bin" "$1" --help 2>&1 || "$bin" --help 2>&1 ;;
    esac
}
while IFS="$(printf '\t')" read -r where prog args; do
    if [ "$prog" = ERROR ]; then
        fail "$where: $args"
        continue
    fi
    eval "set -- $args"
    sub=
    case $prog in
    dexec)
        sub=${1:-}
        case $sub in
        generate | health | rpc | actors | plugins) ;;
        config) sub="config ${2:-}" ;;
        --help | --version) sub= ;;
        *) fail "$where: dexec has no subcommand '$sub'"; continue ;;
        esac ;;
    dexec-model)
        sub=${1:-}
        case $sub in init | info) ;; *) fail "$where: dexec-model has no subcommand '$sub'"; continue ;; esac ;;
    esac
    help_of "$prog" $sub >"$tmp/help"
    for w in "$@"; do
        case $w in
        --*=*) opt=${w%%=*} ;;
        --?*) opt=$w ;;
        -[a-zA-Z]) opt=$w ;;
        *)
            case $w in
            contrib/* | models/* | doc/* | tests/*)
                [ -e "$src/$w" ] || fail "$where: $prog names $w, which is not in the tree" ;;
            esac
            continue ;;
        esac
        grep -Eq -- "(^|[ ,[])$opt([ ,=]|\$|\])" "$tmp/help" ||
            fail "$where: '$prog $sub' has no option $opt (not in its --help)"
    done
done <"$tmp/commands"

# 3. contrib's configuration files are valid as shipped
for f in "$src"/contrib/examples/*.conf "$src"/contrib/slurm/*.conf; do
    "$cli" config check "$f" >"$tmp/out" 2>"$tmp/err" ||
        fail "dexec config check ${f#$src/}: $(cat "$tmp/err")"
done
echo "checked $n documented commands"

# 4. the blocks, run. Every block that shows a command (dexec's programs,
# make, python3, curl, sbatch, a script of the tree: the regex `cmd` below)
# carries a marker naming it, the line before it:
#   markdown:  <!-- doc-test: ID -->     man page:  .\" doc-test: ID
# and each ID is handled below: run as written (bash -e, in a directory of
# its own holding links to the source tree's contrib, doc, models and tests,
# with this build's programs first in PATH and, where the block needs them,
# a real redis-server on a free loopback port and real workers, stopped by
# pid), or covered by the named test that runs it, or not run, with the
# reason (then only checked as shell and for the paths it names). A block
# with commands and no marker, a marker without a block, an ID used twice
# and an ID without a handler all fail. Every other block that is a
# configuration (starts with KEY = and elides nothing) must pass
# `dexec config check`.
python3 - "$src" "$tmp/blocks" >"$tmp/index" <<'PY2' || exit 99
import glob, os, re, sys
src, out = sys.argv[1], sys.argv[2]
os.makedirs(out)
files = [os.path.join(src, "README.md")]
for pat in ("doc/*.md", "doc/*.1", "doc/*.5", "contrib/*/README.md"):
    files += sorted(glob.glob(os.path.join(src, pat)))
# a command line: one of dexec's programs, a build or test command, a
# script of the tree (./x, dir/x.sh, BUILD/core/dexec), a job or service
cmd = re.compile(r'^(?:\$ )?(?:[A-Z_]+=\S* )*(?:dexec|dexec-worker|dexec-model|\./[\w.-]+|'
                 r'[\w-]+/[\w/.-]*(?:/dexec|\.sh)|autoreconf|make|python3|/usr/bin/python3|'
                 r'curl|sbatch|srun|env|nohup|cc|systemctl)(?: |$)')
conf = re.compile(r'^[a-z_][a-z_0-9.]* = ')
seen, nconf = {}, 0
def emit(rel, no, mid, text):
    global nconf
    has = any(cmd.match(l.strip()) for l in text.split("\n"))
    if mid is None:
        if has:
            print("ERROR\t%s:%d\ta block of commands has no doc-test marker" % (rel, no))
        elif conf.match(text) and "..." not in text:
            # a configuration: `dexec config check` must accept it as shown
            nconf += 1
            name = os.path.join(out, "conf-%d.conf" % nconf)
            open(name, "w").write(text)
            print("CONF\t%s:%d\t%s" % (rel, no, name))
        return
    if mid in seen:
        print("ERROR\t%s:%d\tdoc-test ID %s is also used at %s" % (rel, no, mid, seen[mid]))
        return
    seen[mid] = "%s:%d" % (rel, no)
    open(os.path.join(out, mid), "w").write(text)
    print("%s\t%s:%d" % (mid, rel, no))
for path in files:
    rel = os.path.relpath(path, src)
    lines = open(path, encoding="utf-8").read().split("\n")
    man = path.endswith((".1", ".5"))
    mark, i = None, 0
    while i < len(lines):
        l = lines[i]
        m = re.match(r'^(?: *<!-- doc-test: (\S+) -->|\.\\" doc-test: (\S+))$', l)
        if m:
            if mark:
                print("ERROR\t%s:%d\tdoc-test marker %s has no block" % (rel, mark[1], mark[0]))
            mark = (m.group(1) or m.group(2), i + 1)
            i += 1
            continue
        if man and l.startswith((".nf", ".EX")):
            j = i + 1
            block = []
            while j < len(lines) and not lines[j].startswith((".fi", ".EE")):
                if not lines[j].startswith("."): # .RS, .RE
                    block.append(lines[j].replace("\\-", "-").replace("\\e", "\\").replace("\\(aq", "'"))
                j += 1
            emit(rel, i + 2, mark and mark[0], "\n".join(block) + "\n")
            mark, i = None, j + 1
            continue
        if not man and (l.startswith("```") or
                        (l.startswith("    ") and (i == 0 or lines[i - 1].strip() == ""))):
            fenced = l.startswith("```")
            j = i + 1 if fenced else i
            block = []
            while j < len(lines) and ((fenced and not lines[j].startswith("```")) or
                                      (not fenced and (lines[j].startswith("    ") or lines[j] == ""))):
                block.append(lines[j] if fenced else lines[j][4:])
                j += 1
            emit(rel, i + 1 + (1 if fenced else 0), mark and mark[0], "\n".join(block).strip("\n") + "\n")
            mark, i = None, j + (1 if fenced else 0)
            continue
        if mark and l.strip() and not l.startswith("."):
            print("ERROR\t%s:%d\tdoc-test marker %s has no block" % (rel, mark[1], mark[0]))
            mark = None
        i += 1
PY2
blocks=$tmp/blocks
R='' rpid='' pids=''
bin=$tmp/bin
mkdir -p "$bin"
ln -s "$cli" "$bin/dexec"
ln -s "$worker" "$bin/dexec-worker"
ln -s "$top/kernels/dexec-model" "$bin/dexec-model"
# shellcheck disable=SC2317
cleanup_run() {
    for p in $pids $rpid; do
        kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
    done
    [ -n "${KEEP:-}" ] || rm -rf "$tmp"
}
trap cleanup_run EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
# A redis-server of the test's own; R is its URL. Returns 1 (and says why)
# where there is none.
need_redis() {
    [ -n "$rpid" ] && return 0
    if [ -z "${REDIS_SERVER:-}" ]; then
        echo "SKIP (partly): $1 needs redis-server (not found)"
        return 1
    fi
    rport=$(free_port)
    "$REDIS_SERVER" --port "$rport" --bind 127.0.0.1 --save '' --appendonly no \
        >"$tmp/redis.log" 2>&1 &
    rpid=$!
    for _ in $(seq 1 50); do
        grep -q 'Ready to accept' "$tmp/redis.log" && break
        sleep 0.1
    done
    R=redis://127.0.0.1:$rport/0
}
# Waits (at most 30 s) until `dexec actors` shows NAME answering (with the
# token file $2, if given).
wait_actor() {
    for _ in $(seq 1 150); do
        DEXEC_TOKEN_FILE=${2:-} "$cli" actors --registry "$R" 2>/dev/null |
            grep -Eq "^$1 .* ok [0-9.]+ ms" && return 0
        sleep 0.2
    done
    return 1
}
# Starts workers w0 and w1 (unix sockets in $d/run) registered in $R, with
# the token file $1 if given; their pids are in $wpids.
start_w01() {
    mkdir -m 700 "$d/run"
    wpids=
    for wr in 0 1; do
        "$worker" --listen "unix:$d/run/w$wr.sock" --rank $wr --name w$wr --registry "$R" \
            ${1:+--token-file "$1"} >"$d/w$wr.log" 2>&1 &
        wpids="$wpids $!"
    done
    pids="$pids $wpids"
    wait_actor w0 "${1:-}" && wait_actor w1 "${1:-}"
}
# Stops them (SIGTERM: they deregister their names), bounded by wait's.
stop_w01() {
    for wp in $wpids; do
        kill -TERM "$wp" 2>/dev/null && wait "$wp" 2>/dev/null
    done
    wpids=
}
# A directory for block ID, with the tree's directories linked in.
workdir() {
    d=$tmp/run/$1
    [ -d "$d" ] || echo "RUN: doc-test $1 ($(grep "^$1	" "$tmp/index" | cut -f2))"
    mkdir -p "$d"
    for x in contrib doc models tests; do [ -e "$d/$x" ] || ln -s "$src/$x" "$d/$x"; done
}
# Runs block ID as written (after the sed expressions in $2, if any) with
# bash -e in its directory; its output is in $d/out.
run_block() {
    workdir "$1"
    exec_block "$@"
}
exec_block() { # the same in the directory $d made already
    sed -e "${2:-}" "$blocks/$1" >"$d/block.sh"
    (cd "$d" && PATH="$bin:$PATH" bash -e ./block.sh) >"$d/out" 2>&1 </dev/null
}
block_fail() { # ID WHAT
    fail "$(grep "^$1	" "$tmp/index" | cut -f2) (doc-test $1): $2"
    sed 's/^/  | /' "$d/out" 2>/dev/null | tail -n 20
}
# A transcript: "$ COMMAND" lines, each followed by the output it prints
# ("..." standing for any lines; a plugin's path in parentheses for any
# path): each command runs and its output must match.
run_transcript() { # in the directory $d made already
    python3 - "$blocks/$1" "$d" "$bin" <<'PY3' >"$d/out" 2>&1
import os, re, subprocess, sys
text, d, bindir = open(sys.argv[1]).read().split("\n"), sys.argv[2], sys.argv[3]
env = dict(os.environ, PATH=bindir + ":" + os.environ["PATH"])
norm = lambda l: re.sub(r'\(/\S*/(dexec_\w+\.so)\)', r'(\1)', l.rstrip())
bad, k = 0, 0
while k < len(text):
    if not text[k].startswith("$ "):
        k += 1
        continue
    command, want = text[k][2:], []
    k += 1
    while k < len(text) and not text[k].startswith("$ "):
        if text[k].strip():
            want.append(norm(text[k]))
        k += 1
    got = [norm(l) for l in subprocess.run(["bash", "-c", command], cwd=d, env=env,
           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120).stdout.split("\n")
           # the test's own environment, not the reader's
           if not l.startswith("# DEXEC_PLUGIN_PATH=")]
    pos, skip = 0, False
    for w in want:
        if w.strip() == "...":
            skip = True
            continue
        if skip:
            while pos < len(got) and got[pos] != w:
                pos += 1
        skip = False
        if pos < len(got) and got[pos] == w:
            pos += 1
            continue
        print("after '$ %s' the documented line\n  %s\nis not what it prints next:\n  %s" %
              (command, w, got[pos] if pos < len(got) else "(end of output)"))
        print("\n".join(got))
        bad = 1
        break
sys.exit(bad)
PY3
}
# Not run: valid shell, and every BUILD/ path it names exists in this build
# The shell of block $1: its text, or a transcript's "$ " commands.
shell_of() {
    if grep -q '^\$ ' "$blocks/$1"; then
        sed -n 's/^\$ //p' "$blocks/$1"
    else
        cat "$blocks/$1"
    fi
}
not_run() { # ID REASON
    shell_of "$1" | bash -n 2>"$tmp/err" || fail "doc-test $1: not valid shell: $(cat "$tmp/err")"
    for p in $(grep -o 'BUILD/[A-Za-z0-9_./-]*' "$blocks/$1"); do
        [ -e "$top/${p#BUILD/}" ] || fail "doc-test $1 names $p, which this build does not have"
    done
    echo "NOT RUN: doc-test $1 ($(grep "^$1	" "$tmp/index" | cut -f2)): $2"
}
covered() { # ID TEST PATTERN: the test that runs the block, and what in it says so
    grep -q -- "$3" "$src/$2" || fail "doc-test $1: $2 does not run it (no '$3' in it)"
    shell_of "$1" | bash -n 2>"$tmp/err" || fail "doc-test $1: not valid shell: $(cat "$tmp/err")"
    echo "COVERED: doc-test $1 is run by $2"
}

# contrib/example-plugin's dexec_roundrobin.so, built with its own Makefile
# against this build instead of an installed dexec (pkg-config's values
# given on the command line), in $rr; 1 when it does not build.
# pkg-config finds this build as dexec through a dexec-uninstalled.pc
# (pkg-config prefers NAME-uninstalled.pc on its path).
mkdir -p "$tmp/pc"
cat >"$tmp/pc/dexec-uninstalled.pc" <<EOF
plugindir=$tmp/plugindir
Name: dexec
Description: dexec, this build tree
Version: 1
Libs: -L$top/core/.libs -Wl,-rpath,$top/core/.libs -ldexec
Cflags: -I$src/include
EOF
rr=
build_rr() {
    [ -n "$rr" ] && return 0
    mkdir -p "$tmp/rr"
    cp "$src/contrib/example-plugin/Makefile" "$src/contrib/example-plugin/roundrobin.c" "$tmp/rr/"
    PKG_CONFIG_PATH=$tmp/pc make -s -C "$tmp/rr" >"$tmp/rr/make.log" 2>&1 ||
        { fail "contrib/example-plugin does not build: $(cat "$tmp/rr/make.log")"; return 1; }
    rr=$tmp/rr
}
# dexec config check FILE, FILE being block $1 (an ID or a path)
check_conf() { # WHERE FILE
    "$cli" config check "$2" >"$tmp/out" 2>"$tmp/err" ||
        fail "$1: dexec config check: $(cat "$tmp/err")"
}
handled=0 confs=0
while IFS="$(printf '\t')" read -r id where file; do
    if [ "$id" = ERROR ]; then
        fail "$where: $file"
        continue
    fi
    if [ "$id" = CONF ]; then
        check_conf "$where" "$file"
        confs=$((confs + 1))
        continue
    fi
    handled=$((handled + 1))
    case $id in
    readme-using) covered "$id" tests/test-readme.sh '## Using it' ;;
    readme-quick-start)
        # the tree is built (this suite runs from make check), so ./bootstrap
        # is left out; line 2 is this very suite; line 3 (dexec serve) runs
        # with readme-serve-curl
        if [ ! -x "$src/core/dexec" ]; then
            not_run "$id" "./dexec-uninstalled runs the programs of a build in the source tree; this build is elsewhere (VPATH)"
            continue
        fi
        workdir "$id"
        sed -n '1s|^\./bootstrap && \./dexec-uninstalled |"$DEXEC_UNINSTALLED" |p' "$blocks/$id" >"$d/block.sh"
        grep -q '^"$DEXEC_UNINSTALLED" dexec generate' "$d/block.sh" ||
            { fail "doc-test $id: its first line is not ./bootstrap && ./dexec-uninstalled dexec generate ..."; continue; }
        (cd "$d" && DEXEC_UNINSTALLED=$src/dexec-uninstalled bash -e ./block.sh) >"$d/out" 2>&1 </dev/null
        st=$?
        if [ $st -ne 0 ]; then
            block_fail "$id" "exit status $st"
        elif [ "$(head -c 8 "$d/sneaker.png" | od -An -tx1 | tr -d ' ')" != 89504e470d0a1a0a ]; then
            block_fail "$id" "sneaker.png is not a PNG"
        fi ;;
    readme-serve-curl)
        # quick start line 3 then this block, on a free port instead of 8000
        if [ ! -x "$src/core/dexec" ] || ! command -v curl >/dev/null; then
            not_run "$id" "needs ./dexec-uninstalled in a built source tree and curl"
            continue
        fi
        workdir "$id"
        port=$(free_port)
        serve=$(sed -n '3s|^\./bootstrap && \./dexec-uninstalled dexec serve *#.*$|dexec serve|p' "$blocks/readme-quick-start")
        [ "$serve" = "dexec serve" ] ||
            { fail "doc-test readme-quick-start: its third line is not ./bootstrap && ./dexec-uninstalled dexec serve"; continue; }
        (cd "$d" && exec "$src/dexec-uninstalled" dexec serve --listen "127.0.0.1:$port") >"$d/serve.log" 2>&1 &
        spid=$!
        pids="$pids $spid"
        for _ in $(seq 1 300); do
            curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
            kill -0 "$spid" 2>/dev/null || break
            sleep 0.1
        done
        (cd "$d" && sed "s|127.0.0.1:8000|127.0.0.1:$port|" "$blocks/$id" | bash -e -o pipefail) >"$d/out" 2>&1 </dev/null
        st=$?
        kill -TERM "$spid" 2>/dev/null
        wait "$spid"
        sst=$?
        if [ $st -ne 0 ]; then
            block_fail "$id" "exit status $st"; sed 's/^/  | /' "$d/serve.log" | tail -n 5
        elif [ "$(grep -c '"b64_json": "iVBORw0KGgo' "$d/out")" -ne 2 ]; then
            block_fail "$id" "the answer does not hold two base64 PNGs"
        elif [ $sst -ne 0 ]; then
            block_fail "$id" "dexec serve exited with status $sst after SIGTERM"
        fi ;;
    slurm-engine) covered "$id" tests/slurm/slurm.sh 'contrib/slurm/dexec-engine.sbatch' ;;
    slurm-workers) covered "$id" tests/slurm/slurm.sh 'contrib/slurm/dexec-workers.sbatch' ;;
    example-plugin-conf) ;; # the rr.conf of example-plugin-keys
    example-plugin-keys)
        # rr.conf is the README's, the plugin's path this build's copy
        build_rr || continue
        workdir "$id"
        sed "s|/opt/example/dexec_roundrobin.so|$rr/dexec_roundrobin.so|" \
            "$blocks/example-plugin-conf" >"$d/rr.conf"
        run_transcript "$id" || block_fail "$id" "the output differs from the documented one" ;;
    plugin-guide-section)
        # the guide's example of a refused value: the error it names
        build_rr || continue
        cp "$blocks/$id" "$tmp/dexec.conf"
        (cd "$tmp" && DEXEC_PLUGIN_PATH=$rr:$DEXEC_PLUGIN_PATH "$cli" config check dexec.conf) >"$tmp/out" 2>&1
        st=$?
        want='dexec.conf:4: roundrobin.connect_timeout: must be greater than 0 and at most 3600, got 0'
        if [ $st -ne 1 ] || ! grep -qF "$want" "$tmp/out"; then
            fail "$where (doc-test $id): dexec config check exits $st, not 1 with '$want': $(cat "$tmp/out")"
        fi ;;
    example-plugin-run)
        # in a copy of contrib/example-plugin, pkg-config finding this build;
        # the block stops its workers itself (kill %1 %2): a trap makes sure;
        # its mktemp -d makes the sockets' directory in $d (TMPDIR)
        command -v pkg-config >/dev/null ||
            { not_run "$id" "pkg-config is not installed"; continue; }
        workdir "$id"
        cp "$src/contrib/example-plugin/Makefile" "$src/contrib/example-plugin/roundrobin.c" "$d/"
        { echo 'trap '"'"'st=$?; kill $(jobs -p) 2>/dev/null || :; exit $st'"'"' EXIT'; cat "$blocks/$id"; } >"$d/block.sh"
        (cd "$d" && PATH="$bin:$PATH" PKG_CONFIG_PATH=$tmp/pc TMPDIR=$d timeout 300 bash -e ./block.sh) \
            >"$d/out" 2>&1 </dev/null
        st=$?
        if [ $st -ne 0 ]; then
            block_fail "$id" "exit status $st"
        else
            for f in output-0.png output-1.png run-0.png run-1.png; do
                [ -s "$d/$f" ] || block_fail "$id" "no $f"
            done
        fi ;;
    example-plugin-spawn)
        # where example-plugin-run built the plugin
        d=$tmp/run/example-plugin-run
        if [ ! -f "$d/dexec_roundrobin.so" ]; then
            fail "doc-test $id: example-plugin-run built no dexec_roundrobin.so"
            continue
        fi
        rm -f "$d"/output-*.png
        exec_block "$id"
        st=$?
        if [ $st -ne 0 ]; then
            block_fail "$id" "exit status $st"
        elif [ ! -s "$d/output-0.png" ] || [ ! -s "$d/output-1.png" ]; then
            block_fail "$id" "no output-0.png and output-1.png"
        fi ;;
    example-plugin-install | example-plugin-staged)
        covered "$id" contrib/example-plugin/installcheck.sh 'dexec_roundrobin.so' ;;
    model-format-set-metadata)
        # on a copy of the model: the command rewrites the file it names
        workdir "$id"
        rm "$d/models"
        mkdir "$d/models"
        cp "$src/models/fashion-dit.safetensors" "$d/models/"
        python3 -c 'import json, struct, sys
f = open(sys.argv[1], "rb"); n = struct.unpack("<Q", f.read(8))[0]
h = json.loads(f.read(n)); h["__metadata__"].pop("dexec.sizes", None); b = json.dumps(h).encode()
rest = f.read(); f = open(sys.argv[1], "wb"); f.write(struct.pack("<Q", len(b))); f.write(b); f.write(rest)' \
            "$d/models/fashion-dit.safetensors" # without the key first: the command adds it
        exec_block "$id"
        st=$?
        if [ $st -ne 0 ]; then
            block_fail "$id" "exit status $st"
        elif ! "$top/kernels/dexec-model" info "$d/models/fashion-dit.safetensors" >"$d/out" 2>&1 ||
            ! grep -q '^  dexec.sizes = 28x28$' "$d/out"; then
            block_fail "$id" "dexec-model info does not show dexec.sizes = 28x28 after it"
        elif ! DEXEC_MODEL_PATH=$d/models "$cli" generate -p sneaker -o "$d/s.png" -q >"$d/out" 2>&1; then
            block_fail "$id" "the rewritten model does not generate"
        fi ;;
    perf-cpu-only)
        # from the top of the build tree ($PWD), the output in the test's
        # directory instead of /tmp/s.png
        if [ ! -e "$top/models/fashion-dit.safetensors" ]; then
            not_run "$id" "\$PWD/models is the source tree's models/, and this build is elsewhere (VPATH)"
            continue
        fi
        workdir "$id"
        sed "s|/tmp/s.png|$d/s.png|" "$blocks/$id" >"$d/block.sh"
        (cd "$top" && bash -e "$d/block.sh") >"$d/out" 2>&1 </dev/null
        st=$?
        if [ $st -ne 0 ]; then
            block_fail "$id" "exit status $st"
        elif [ ! -s "$d/s.png" ]; then
            block_fail "$id" "no s.png"
        fi ;;
    readme-packagers) not_run "$id" "it installs into /usr; tests/build-check.sh runs ./configure --prefix=OTHER && make install (distcheck: make install into a staging prefix)" ;;
    fuzzing-run | protocol-fuzz) not_run "$id" "fuzzing for minutes with clang's libFuzzer; make check replays the seed corpora (test-fuzz-seeds.sh)" ;;
    model-training | train-run) not_run "$id" "training: hours of CPU and PyTorch (python3-torch)" ;;
    model-quality-pytorch | model-quality-images | train-quality)
        not_run "$id" "the quality evaluation: PyTorch and hundreds of images (DIR stands for their directory)" ;;
    train-reexport) not_run "$id" "PyTorch (python3-torch), and it rewrites the bundled model" ;;
    train-golden | published-golden) not_run "$id" "PyTorch (python3-torch); they rewrite tests/golden, which make check reads (tests/test-convert-pt.sh runs convert_pt.py where torch is found)" ;;
    perf-bench | perf-bench-rpc | perf-bench-rpc-runs | perf-bench-rpc-auto | perf-bench-scaling | perf-bench-published | perf-bench-published-512 | perf-throughput | perf-serve | perf-parallel-quiet | \
        perf-parallel | perf-parallel-groups)
        not_run "$id" "a benchmark of minutes whose figures are machine-dependent (make bench); doc/performance.md records them" ;;
    perf-cuda-check) not_run "$id" "needs a GPU (tests/test-gpu-build.sh runs tests/gpu/run.sh --build-only where nvcc is found)" ;;
    perf-cuda-links) not_run "$id" "installs the tree (a make install inside make check would race its build); distcheck stages an install" ;;
    perf-seqpar) not_run "$id" "a benchmark of minutes whose figures are machine-dependent (make bench); doc/performance.md records them" ;;
    config-dump-ext-conf) check_conf "$where" "$blocks/$id" ;; # the file config-dump reads
    config-dump)
        workdir "$id"
        cp "$blocks/config-dump-ext-conf" "$d/ext.conf"
        run_transcript "$id" || block_fail "$id" "the dump differs from the documented one" ;;
    dexec-model-1-dit-s)
        run_block "$id"; st=$?
        if [ $st -ne 0 ]; then
            block_fail "$id" "exit status $st"
        elif ! "$top/kernels/dexec-model" info "$d/dit-s.safetensors" >"$d/out" 2>&1 ||
            ! grep -q 'hidden 384' "$d/out" || ! grep -q 'depth 12' "$d/out"; then
            block_fail "$id" "dexec-model info dit-s.safetensors does not show hidden 384, depth 12"
        fi ;;
    dexec-model-1-pets)
        run_block "$id"; st=$?
        if [ $st -ne 0 ]; then
            block_fail "$id" "exit status $st"
        elif ! grep -q 'kitty' "$d/out" || ! grep -q '2 classes' "$d/out"; then
            block_fail "$id" "dexec-model info pets.safetensors does not show 2 classes and the word kitty"
        fi ;;
    dexec-1-examples)
        # the last example needs workers named w0 and w1 in the registry
        need_redis "$id" || continue
        workdir "$id"
        start_w01 || { block_fail "$id" "workers w0, w1 did not register"; stop_w01; continue; }
        DEXEC_REGISTRY=$R exec_block "$id"; st=$?
        stop_w01
        if [ $st -ne 0 ]; then
            block_fail "$id" "exit status $st"
        else
            for f in sneaker.png boot-0.png boot-1.png boot-2.png boot-3.png; do
                [ -s "$d/$f" ] || block_fail "$id" "no $f"
            done
            grep -q '"rank": *1' "$d/out" || block_fail "$id" "get_stats --rank 1 did not answer for rank 1"
            grep -q '^healthy: 2 rank(s) on external' "$d/out" ||
                block_fail "$id" "dexec health --backend external did not find w0 and w1 healthy"
            # image i < 2 on rank i (each free rank takes the next image);
            # the later ones on whichever rank was free first
            grep -q '^boot-1.png: 28x28, seed 43, .* rank 1,' "$d/out" ||
                block_fail "$id" "boot-1.png was not seed 43 on rank 1 of two"
            grep -q '^boot-3.png: 28x28, seed 45, .* rank [01],' "$d/out" ||
                block_fail "$id" "boot-3.png was not seed 45 on a rank of two"
        fi ;;
    dexec-worker-1-local)
        # as written, but in the test's registry and with /run/dexec in the
        # test's directory (the worker runs until SIGTERM)
        need_redis "$id" || continue
        workdir "$id"
        sed -e "s|^dexec-worker |exec dexec-worker |; s|redis://127.0.0.1:6379/0|$R|; s|/run/dexec|$d/run|" \
            "$blocks/$id" >"$d/block.sh"
        (cd "$d" && PATH="$bin:$PATH" exec bash ./block.sh) >"$d/out" 2>&1 </dev/null &
        wpid=$!
        pids="$pids $wpid"
        if ! wait_actor diffusion_worker_0; then
            block_fail "$id" "the worker did not register as diffusion_worker_0"
        else
            kill -TERM "$wpid"
            wait "$wpid"
            st=$?
            [ $st -eq 0 ] || block_fail "$id" "after SIGTERM the worker exited with status $st, not 0"
            "$cli" actors --registry "$R" >"$d/actors" 2>&1
            grep -q '^no actors registered' "$d/actors" ||
                block_fail "$id" "the worker's name is still registered: $(cat "$d/actors")"
        fi ;;
    protocol-latent-forward)
        # x.f32: [B, C, h, w] = [2, 4, 8, 8] float32 (the golden model's in_channels)
        workdir "$id"
        python3 -c 'import struct, sys; sys.stdout.buffer.write(struct.pack("<512f", *[((i * 37) % 101 - 50) / 50.0 for i in range(512)]))' >"$d/x.f32"
        exec_block "$id"; st=$?
        if [ $st -ne 0 ]; then
            block_fail "$id" "exit status $st"
        elif [ "$(wc -c <"$d/v.f32")" -ne 4096 ]; then
            block_fail "$id" "v.f32 is $(wc -c <"$d/v.f32") bytes, not [2, 8, 8, 8] float32 (4096)"
        fi ;;
    config-external) check_conf "$where" "$blocks/$id" ;; # the file config-names-env reads
    config-names-env)
        # the section's file as external.conf; the registry and the token of
        # this test in the environment, as the text says; workers w0 and w1
        need_redis "$id" || continue
        workdir "$id"
        cp "$blocks/config-external" "$d/external.conf"
        (umask 077; head -c 32 /dev/urandom | base64 >"$d/token")
        start_w01 "$d/token" || { block_fail "$id" "workers w0, w1 did not register"; stop_w01; continue; }
        DEXEC_REGISTRY=$R DEXEC_TOKEN_FILE=$d/token exec_block "$id"
        st=$?
        stop_w01
        if [ $st -ne 0 ]; then
            block_fail "$id" "exit status $st"
        elif [ ! -s "$d/output-0.png" ] || [ ! -s "$d/output-1.png" ]; then
            block_fail "$id" "no output-0.png and output-1.png: $(ls "$d")"
        elif ! grep -q 'rank 0' "$d/out" || ! grep -q 'rank 1' "$d/out"; then
            block_fail "$id" "the two images were not made on ranks 0 and 1"
        fi ;;
    model-tensor-rpc)
        workdir "$id"
        python3 -c 'import struct, sys; sys.stdout.buffer.write(struct.pack("<256f", *[((i * 13) % 29 - 14) / 7.0 for i in range(256)]))' >"$d/noise.f32"
        python3 -c 'import struct, sys; sys.stdout.buffer.write(struct.pack("<1024f", *[((i * 17) % 31 - 15) / 7.5 for i in range(1024)]))' >"$d/step_noise.f32"
        exec_block "$id"
        st=$?
        if [ $st -ne 0 ]; then
            block_fail "$id" "exit status $st"
        elif [ "$(wc -c <"$d/z.f32")" -ne 1024 ] || [ "$(wc -c <"$d/img.f32")" -ne 3072 ]; then
            block_fail "$id" "z.f32 is $(wc -c <"$d/z.f32") bytes (not [1, 4, 8, 8]: 1024), img.f32 $(wc -c <"$d/img.f32") (not [1, 3, 16, 16]: 3072)"
        fi ;;
    model-generate-noise)
        # the seed's noise saved by latent_noise makes the seed's image
        # again: the same pixels (the PNGs' text chunks name the seeds)
        run_block "$id"
        st=$?
        if [ $st -ne 0 ]; then
            block_fail "$id" "exit status $st"
        elif [ "$(wc -c <"$d/noise.f32")" -ne 1024 ] || [ "$(wc -c <"$d/step_noise.f32")" -ne 4096 ]; then
            block_fail "$id" "noise.f32 is $(wc -c <"$d/noise.f32") bytes (not 1024), step_noise.f32 $(wc -c <"$d/step_noise.f32") (not 4096)"
        elif ! python3 - "$d/a.png" "$d/b.png" <<'PY3'; then
import struct, sys, zlib
def pixels(path):
    b, i, idat = open(path, 'rb').read(), 8, b''
    while i < len(b):
        n, = struct.unpack('>I', b[i:i + 4])
        if b[i + 4:i + 8] == b'IDAT':
            idat += b[i + 8:i + 8 + n]
        i += 12 + n
    return zlib.decompress(idat)
sys.exit(0 if pixels(sys.argv[1]) == pixels(sys.argv[2]) else 1)
PY3
            block_fail "$id" "b.png (the seed's noise from files) has not a.png's pixels"
        fi ;;
    model-quality-final | model-quality-mid)
        not_run "$id" "the quality evaluation: 500 images on the CPU and contrib/train/quality.py (PyTorch)" ;;
    model-published-run) not_run "$id" "/path/to/DiT-XL-2-256 stands for a published pipeline, not in the tree" ;;
    model-convert-pt) not_run "$id" "needs the published .pt checkpoints and PyTorch (tests/test-convert-pt.sh converts a small one)" ;;
    model-full-size) not_run "$id" "a documented check of minutes (a DiT-XL-sized pipeline), not part of make check" ;;
    plugin-select) covered "$id" contrib/example-plugin/installcheck.sh 'generate --backend "$work/dexec_roundrobin.so"' ;;
    ray-slurm-task) not_run "$id" "the step the engine starts (N, M, D, SECONDS filled in by it); tests/slurm/slurm.sh (test-slurm) runs it" ;;
    ray-node-agent) not_run "$id" "it names a cluster's hosts (head, 10.0.0.7) and offers 32 CPUs and 8 GPUs, more than a CI machine has (the agent refuses that); tests/test-ray.c runs node agents" ;;
    dexec-worker-1-tcp) not_run "$id" "it names a cluster's hosts (head, 10.0.0.7) and a GPU; tests/slurm/slurm.sh runs the same worker through dexec-workers.sbatch" ;;
    *) fail "doc-test $id ($where) has no handler in tests/test-doc-commands.sh" ;;
    esac
done <"$tmp/index"
[ "$handled" -ge 20 ] || fail "found only $handled marked blocks"
[ "$confs" -ge 8 ] || fail "found only $confs configuration blocks"
echo "handled $handled marked blocks; $confs configuration blocks pass dexec config check"
exit $status
