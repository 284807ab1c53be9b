#!/bin/sh
# test-headers.sh - every installed header (include/dexec/*.h, each listed in
# Makefile.am's dexecinclude_HEADERS) compiles on its own, first in a
# translation unit, with -Wall -Wextra -Werror: as C (with $CC) and as C++
# (with $CXX or c++, checking the extern "C" guards). A header that needs
# another one must include it itself.
set -u
top=${DEXEC_TOP_SRCDIR:?run me from make check}
cc=${CC:-cc}
cxx=${CXX:-c++}
tmp=$(mktemp -d /tmp/dexec-test-headers.XXXXXX) || exit 99
trap 'rm -rf "$tmp"' EXIT
status=0
n=0

have_cxx=1
command -v "$cxx" >/dev/null 2>&1 || have_cxx=0
for h in "$top"/include/dexec/*.h; do
    name=dexec/$(basename "$h")
    if ! grep -q "include/$name" "$top/Makefile.am"; then
        echo "FAIL: $name is not in Makefile.am's dexecinclude_HEADERS (not installed)"
        status=1
    fi
    printf '#include <%s>\n#include <%s>\nint dexec_header_test;\n' "$name" "$name" > "$tmp/t.c"
    cp "$tmp/t.c" "$tmp/t.cc"
    # shellcheck disable=SC2086
    if ! $cc -std=c11 -Wall -Wextra -Werror -pedantic -I"$top/include" -c "$tmp/t.c" \
        -o "$tmp/t.o" > "$tmp/out" 2>&1; then
        echo "FAIL: <$name> does not compile alone as C:"
        cat "$tmp/out"
        status=1
    fi
    if [ "$have_cxx" -eq 1 ] && ! "$cxx" -std=c++11 -Wall -Wextra -Werror -I"$top/include" -c "$tmp/t.cc" \
        -o "$tmp/t.o" > "$tmp/out" 2>&1; then
        echo "FAIL: <$name> does not compile alone as C++:"
        cat "$tmp/out"
        status=1
    fi
    n=$((n + 1))
done
[ "$n" -ge 8 ] || { echo "FAIL: only $n headers found in $top/include/dexec"; status=1; }

# The ABI structs keep one size within ABI major 1 on 32-bit targets too
# (Debian builds i386 and armhf): checked with clang's cross targets, which
# need no target libc in freestanding mode.
abi32=""
if command -v clang >/dev/null 2>&1; then
    cat > "$tmp/abi.c" <<'EOC'
#include <dexec/dexec.h>
_Static_assert(sizeof(dexec_request) == ((DEXEC_REQUEST_SIZE_1_1 + 7) & ~(size_t)7) + 64,
               "dexec_request changed size within ABI major 1");
_Static_assert(sizeof(dexec_output) == DEXEC_OUTPUT_SIZE_1_1 + 64,
               "dexec_output changed size within ABI major 1");
EOC
    for target in i686-linux-gnu armv7-linux-gnueabihf x86_64-linux-gnu; do
        if ! clang --target=$target -ffreestanding -std=c11 -Werror -I"$top/include" \
            -fsyntax-only "$tmp/abi.c" > "$tmp/out" 2>&1; then
            echo "FAIL: the ABI structs' sizes differ on $target:"
            cat "$tmp/out"
            status=1
        fi
    done
    abi32=" (struct sizes checked on i686, armv7 and x86_64)"
fi
[ "$status" -eq 0 ] || exit 1
if [ "$have_cxx" -eq 0 ]; then
    echo "SKIP: $n headers compile alone as C; no C++ compiler ($cxx) to check them as C++ (set CXX)"
    exit 77
fi
echo "PASS: $n headers compile alone as C and C++$abi32"
