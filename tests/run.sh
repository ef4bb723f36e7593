#!/bin/sh
# Runs the bats suite against $SMTPD and closes with one "N passed, N skipped, N failed" line.
# A skipped test (bats prints "ok N name # skip") proved nothing, so it is not counted as passed.
label=$1
out=$(mktemp)
bats tests | tee "$out"
status=$?
skipped=$(grep -c '^ok .* # skip' "$out")
passed=$(grep '^ok ' "$out" | grep -vc ' # skip')
failed=$(grep -c '^not ok ' "$out")
rm -f "$out"
echo "$label: $passed passed, $skipped skipped, $failed failed"
[ "$status" -eq 0 ] && [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
