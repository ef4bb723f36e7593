#!/usr/bin/env bats
# Golden transcripts: tests/golden/NAME.in is a client's whole input, NAME.out the exact
# replies, NAME.eml (when present) the first stored file, byte for byte. Message ids and the
# date line are the only parts that change between runs; both are normalised.

setup() {
	T=$(mktemp -d)
	SMTPD=${SMTPD:-$BATS_TEST_DIRNAME/../smtpd}
}

teardown() {
	rm -rf "$T"
}

normalise() {
	sed -E 's/[0-9]+\.M[0-9]+P[0-9]+Q[0-9]+/<id>/g' "$@"
}

@test "golden transcripts: replies and stored files match byte for byte" {
	local in name f n=0
	for in in "$BATS_TEST_DIRNAME"/golden/*.in; do
		name=${in%.in}
		rm -rf "$T/Maildir"
		"$SMTPD" -h test.example -m "$T/Maildir" < "$in" 2>/dev/null | normalise > "$T/out" || true
		cmp "$name.out" "$T/out" || { diff <(cat -A "$name.out") <(cat -A "$T/out"); return 1; }
		if [ -f "$name.eml" ]; then
			f=$(ls "$T"/Maildir/new/* | sort | head -1)
			normalise "$f" | sed -E '4s/^\t.*$/\t<date>/' > "$T/eml"
			cmp "$name.eml" "$T/eml" || { diff "$name.eml" "$T/eml"; return 1; }
		fi
		n=$((n + 1))
	done
	echo "# $n golden transcripts" >&3
	[ "$n" -ge 4 ]
}
