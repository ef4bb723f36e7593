#!/usr/bin/env python3
"""DKIM for the tests: RFC 6376 rsa-sha256 with relaxed/relaxed canonicalization; the RSA
signature is openssl's (Python's standard library has none).

  dkimsign.py key KEY.pem            the TXT record for the key: "v=DKIM1; k=rsa; p=..."
  dkimsign.py sign KEY.pem DOMAIN SELECTOR < message > signed
                                     the message (CRLF line ends) with a DKIM-Signature: first"""
import base64
import hashlib
import re
import subprocess
import sys

SIGNED = ['from', 'to', 'subject', 'date', 'message-id']


def relaxed_header(name, value):
    value = re.sub(rb'\r\n(?=[ \t])', b'', value)
    value = re.sub(rb'[ \t]+', b' ', value).strip(b' \t')
    return name.strip().lower() + b':' + value


def relaxed_body(body):
    lines = [re.sub(rb'[ \t]+', b' ', line).rstrip(b' ') for line in body.split(b'\r\n')]
    while lines and lines[-1] == b'':
        lines.pop()
    return b''.join(line + b'\r\n' for line in lines)


def split_message(message):
    head, _, body = message.partition(b'\r\n\r\n')
    fields = []
    for line in head.split(b'\r\n'):
        if line[:1] in (b' ', b'\t') and fields:
            fields[-1] += b'\r\n' + line
        else:
            fields.append(line)
    return [f.split(b':', 1) for f in fields], body


def sign(key, domain, selector, message):
    fields, body = split_message(message)
    bh = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode()
    present = [name for name in SIGNED if any(n.strip().lower() == name.encode() for n, _ in fields)]
    tag = ('v=1; a=rsa-sha256; c=relaxed/relaxed; d=%s; s=%s; h=%s; bh=%s; b='
           % (domain, selector, ':'.join(present), bh))
    data = b''
    for name in present:
        value = [v for n, v in fields if n.strip().lower() == name.encode()][-1]
        data += relaxed_header(name.encode(), value) + b'\r\n'
    data += relaxed_header(b'DKIM-Signature', b' ' + tag.encode())
    sig = subprocess.run(['openssl', 'dgst', '-sha256', '-sign', key], input=data,
                         stdout=subprocess.PIPE, check=True).stdout
    return b'DKIM-Signature: ' + tag.encode() + base64.b64encode(sig) + b'\r\n' + message


def key_record(key):
    der = subprocess.run(['openssl', 'rsa', '-in', key, '-pubout', '-outform', 'DER'],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True).stdout
    return 'v=DKIM1; k=rsa; p=' + base64.b64encode(der).decode()


if __name__ == '__main__':
    if len(sys.argv) == 3 and sys.argv[1] == 'key':
        print(key_record(sys.argv[2]))
    elif len(sys.argv) == 5 and sys.argv[1] == 'sign':
        sys.stdout.buffer.write(sign(sys.argv[2], sys.argv[3], sys.argv[4],
                                     sys.stdin.buffer.read()))
    else:
        sys.exit(__doc__)
