#!/bin/sh
# Instructions per `malloc` and per `free` through LD_PRELOAD (issue 13's fast-path budget):
# callgrind on the suite's binary trees at scale 0.05 (1 492 481 mallocs and as many frees), the
# inclusive instruction count of `malloc` and `free` divided by the calls.
#
#   allocator/preload/benches/callgrind.sh [LIB..]
#
# LIB defaults to target/release/libheaplens.so (built first) and Debian's libmimalloc 2.0.
# Counts are reproducible: the same library gives the same figures run after run.
set -eu
root=$(cd "$(dirname "$0")/../../.." && pwd)
out=${CALLGRIND_OUT:-$root/target/release/callgrind}
mkdir -p "$out"
gcc -O2 -pthread -o "$out/trees" "$root/allocator/preload/benches/c/trees.c"
if [ $# -eq 0 ]; then
  (cd "$root" && cargo build --release -p heaplens-preload >/dev/null 2>&1)
  set -- "$root/target/release/libheaplens.so" /usr/lib/x86_64-linux-gnu/libmimalloc.so.2
fi
printf '%-50s %12s %12s %14s\n' library 'Ir/malloc' 'Ir/free' 'whole program'
for lib in "$@"; do
  f="$out/callgrind.out.$(basename "$lib")"
  LD_PRELOAD=$lib valgrind --tool=callgrind --callgrind-out-file="$f" "$out/trees" 0.05 \
    >/dev/null 2>"$out/valgrind.log"
  # Each function's calls from its callers ("calls=N" lines under "cfn=") and its inclusive
  # count, summed over its entries (mimalloc exports `malloc` and `free` as aliases of `mi_*`).
  callgrind_annotate --inclusive=yes "$f" 2>/dev/null >"$f.txt"
  total=$(awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}' "$f.txt")
  per() {
    awk -v fn="$1" '
      /^fn=\([0-9]+\) / { d = $0; match(d, /\([0-9]+\)/); name[substr(d, RSTART, RLENGTH)] = $2 }
      /^cfn=/ { c = $0; if (match(c, /\([0-9]+\)/)) { id = substr(c, RSTART, RLENGTH) }
                rest = c; sub(/^cfn=\([0-9]+\) ?/, "", rest); sub(/^cfn=/, "", rest)
                if (rest != "") name[id] = rest; callee = name[id]; next_is_calls = 1; next }
      /^calls=/ && next_is_calls { split($0, a, /[= ]/); n = a[2]; getline; split($0, b, " ");
                if (callee == fn) { calls += n; incl += b[2] } next_is_calls = 0; next }
      END { if (calls > 0) printf "%.1f", incl / calls; else printf "n/a" }' "$f"
  }
  printf '%-50s %12s %12s %14s\n' "$lib" "$(per malloc)" "$(per free)" "$total"
done
