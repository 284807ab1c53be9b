#!/bin/sh
# test-doc-commands.sh - every dexec, dexec-worker and dexec-model command
# shown in README.md, doc/*.md, the man pages (doc/*.1, doc/*.5) and
# contrib/*/README.md is checked against the programs of this build: the
# subcommand exists and every option it uses is one that program's --help
# lists; every repository path a command names (contrib/..., models/...,
# doc/...) exists; every configuration file under contrib/ passes
# `dexec config check`. Blocks that run for real are run elsewhere:
# README.md's by test-readme.sh, contrib/example-plugin's by its
# installcheck.sh, contrib/slurm's dexec-engine.sbatch by tests/slurm,
# contrib/systemd's units by test-systemd.sh.
set -u
cli=${DEXEC_CLI:?run me from make check}
worker=${DEXEC_WORKER:?run me from make check}
src=${DEXEC_TOP_SRCDIR:?run me from make check}
top=${DEXEC_TOP_BUILDDIR:?run me from make check}
command -v python3 >/dev/null || { echo "SKIP: python3 not found (it extracts the commands)"; exit 77; }
tmp=$(mktemp -d /tmp/dexec-test-doc.XXXXXX) || exit 99
trap '[ -n "${KEEP:-}" ] || rm -rf "$tmp"' EXIT
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
# 4. the configuration blocks of doc/configuration.md and README.md (an
# indented block that starts with KEY = and elides nothing) pass
# `dexec config check`, each in a file of its own
python3 - "$src" "$tmp" >"$tmp/confs" <<'PY' || exit 99
import os, re, sys
src, tmp = sys.argv[1], sys.argv[2]
k = 0
for rel in ("doc/configuration.md", "README.md"):
    lines = open(os.path.join(src, rel), encoding="utf-8").read().split("\n")
    i = 0
    while i < len(lines):
        fenced = lines[i] == "```"
        if (fenced or (lines[i].startswith("    ") and (i == 0 or lines[i - 1].strip() == ""))):
            j = i + 1 if fenced else i
            block = []
            while j < len(lines) and ((fenced and lines[j] != "```") or
                                      (not fenced and (lines[j].startswith("    ") or lines[j] == ""))):
                block.append(lines[j][0 if fenced else 4:])
                j += 1
            text = "\n".join(block).strip() + "\n"
            if re.match(r'^[a-z_][a-z_0-9.]* = ', text) and "..." not in text:
                k += 1
                name = os.path.join(tmp, "block-%d.conf" % k)
                open(name, "w").write(text)
                print("%s:%d\t%s" % (rel, i + 1 + (1 if fenced else 0), name))
            i = j + 1
        else:
            i += 1
PY
[ "$(wc -l <"$tmp/confs")" -ge 5 ] || fail "found only $(wc -l <"$tmp/confs") configuration blocks"
while IFS="$(printf '\t')" read -r where file; do
    "$cli" config check "$file" >"$tmp/out" 2>"$tmp/err" ||
        fail "$where: dexec config check: $(cat "$tmp/err")"
done <"$tmp/confs"
echo "checked $n documented commands and $(wc -l <"$tmp/confs") configuration blocks"
exit $status
