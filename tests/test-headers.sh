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
[ "$status" -eq 0 ] || exit 1
if [ "$have_cxx" -eq 0 ]; then
    echo "SKIP: $n headers compile alone as C; no C++ compiler ($cxx) to check them as C++ (set CXX)"
    exit 77
fi
echo "PASS: $n headers compile alone as C and C++"
