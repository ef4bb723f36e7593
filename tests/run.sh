#!/bin/sh
# Runs the bats suite against $SMTPD and closes with one "N passed, N failed" line.
label=$1
out=$(mktemp)
bats tests | tee "$out"
status=$?
passed=$(grep -c '^ok ' "$out")
failed=$(grep -c '^not ok ' "$out")
rm -f "$out"
echo "$label: $passed passed, $failed failed"
[ "$status" -eq 0 ] && [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
