#!/usr/bin/env python3
"""A scripted milter for the tests: the Sendmail milter protocol (version 6), server side, in
Python's standard library, doing what real milters seldom do.

  milter.py serve SOCKET SCRIPT RECORD   SOCKET is unix:/path or inet:127.0.0.1:PORT
  milter.py show RECORD                  the recorded events, one per line

SCRIPT is a file of lines "STAGE ACTION [ACTION...]"; STAGE is optneg, connect, helo, mail,
rcpt, data, header, eoh, body or eom, for every such event, or STAGE#N for the Nth of them in
a connection (rcpt#2, body#2), or eom?TEXT for the end of a message whose header fields or body
held TEXT. What a stage is not given answers "continue" (or nothing, for a stage the optneg
line says it will not answer). Actions, each one packet or one deed:

  continue accept reject tempfail discard progress skip
  reply:TEXT            SMFIR_REPLYCODE; \\r \\n \\0 \\xHH escapes in TEXT
  add:NAME:VALUE        SMFIR_ADDHEADER       ins:INDEX:NAME:VALUE  SMFIR_INSHEADER
  chg:INDEX:NAME:VALUE  SMFIR_CHGHEADER       quarantine:REASON
  pkt:C:DATA            a packet of command letter C with DATA (escapes as in reply)
  raw:HEX               these bytes as they are (a packet of our own making)
  sleep:SECONDS         wait, then go on       hang  never answer     close  hang up
  optneg:VERSION:ACTIONS:STEPS  (stage optneg only) the answer to the negotiation; by default
                        version 6, the actions offered, no steps

Each event received is appended to RECORD as one JSON object per line."""
import json
import os
import socket
import struct
import sys
import threading
import time

NAMES = {b'O': 'optneg', b'C': 'connect', b'H': 'helo', b'M': 'mail', b'R': 'rcpt', b'T': 'data',
         b'L': 'header', b'N': 'eoh', b'B': 'body', b'E': 'eom', b'A': 'abort', b'Q': 'quit',
         b'D': 'macro'}
NO_REPLY = {'connect': 0x1000, 'helo': 0x2000, 'mail': 0x4000, 'rcpt': 0x8000, 'data': 0x10000,
            'header': 0x80, 'eoh': 0x40000, 'body': 0x80000}
SIMPLE = {'continue': b'c', 'accept': b'a', 'reject': b'r', 'tempfail': b't', 'discard': b'd',
          'progress': b'p', 'skip': b's'}


def unescape(text):
    return text.encode('latin-1').decode('unicode_escape').encode('latin-1')


def packet(cmd, data=b''):
    return struct.pack('>I', len(data) + 1) + cmd + data


def strings(data):
    parts = data.split(b'\0')
    return [p.decode('latin-1') for p in (parts[:-1] if parts and parts[-1] == b'' else parts)]


class Session:
    def __init__(self, conn, script, record, lock):
        self.conn, self.script, self.record, self.lock = conn, script, record, lock
        self.counts = {}
        self.steps = 0
        self.content = b''

    def log(self, event):
        with self.lock, open(self.record, 'a') as f:
            f.write(json.dumps(event) + '\n')

    def read(self, n):
        buf = b''
        while len(buf) < n:
            chunk = self.conn.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def act(self, action):
        """Does one action; False when the connection is over."""
        word, _, rest = action.partition(':')
        if word in SIMPLE:
            self.conn.sendall(packet(SIMPLE[word]))
        elif word == 'reply':
            self.conn.sendall(packet(b'y', unescape(rest) + b'\0'))
        elif word == 'add':
            name, _, value = rest.partition(':')
            self.conn.sendall(packet(b'h', name.encode() + b'\0' + unescape(value) + b'\0'))
        elif word in ('ins', 'chg'):
            index, name, value = rest.split(':', 2)
            data = struct.pack('>I', int(index)) + name.encode() + b'\0' + unescape(value) + b'\0'
            self.conn.sendall(packet(b'i' if word == 'ins' else b'm', data))
        elif word == 'quarantine':
            self.conn.sendall(packet(b'q', unescape(rest) + b'\0'))
        elif word == 'pkt':
            cmd, _, data = rest.partition(':')
            self.conn.sendall(packet(cmd.encode(), unescape(data)))
        elif word == 'raw':
            self.conn.sendall(bytes.fromhex(rest))
        elif word == 'sleep':
            time.sleep(float(rest))
        elif word == 'hang':
            time.sleep(3600)
        elif word == 'close':
            self.conn.close()
            return False
        else:
            raise ValueError('unknown action ' + action)
        return True

    def answer(self, stage):
        self.counts[stage] = self.counts.get(stage, 0) + 1
        key = '%s#%d' % (stage, self.counts[stage])
        actions = self.script.get(key, self.script.get(stage))
        if stage == 'eom':
            for k, v in self.script.items():
                if k.startswith('eom?') and k[4:].encode() in self.content:
                    actions = v
            self.content = b''
        if actions is None:
            if self.steps & NO_REPLY.get(stage, 0):
                return True
            actions = ['continue']
        return all(self.act(a) for a in actions)

    def negotiate(self, data):
        version, actions, steps = struct.unpack('>III', data[:12])
        self.log({'cmd': 'optneg', 'version': version, 'actions': actions, 'steps': steps})
        answer = [6, actions, 0]
        for a in self.script.get('optneg', []):
            if a.startswith('optneg:'):
                answer = [int(x, 0) for x in a.split(':')[1:4]]
            elif not self.act(a):
                return False
        self.steps = answer[2]
        self.conn.sendall(packet(b'O', struct.pack('>III', *answer)))
        return True

    def event(self, cmd, data):
        stage = NAMES.get(cmd, 'unknown')
        if cmd == b'D':
            args = strings(data[1:])
            self.log({'cmd': 'macro', 'stage': NAMES.get(data[:1], '?'),
                      'macros': dict(zip(args[0::2], args[1::2]))})
            return True
        if cmd in (b'B', b'L'):
            self.content += data
        if cmd == b'B':
            self.log({'cmd': 'body', 'data': data.decode('latin-1')})
        elif cmd == b'C':
            host, _, rest = data.partition(b'\0')
            family = rest[:1].decode()
            port = struct.unpack('>H', rest[1:3])[0] if family in '46' and len(rest) >= 3 else None
            self.log({'cmd': 'connect', 'host': host.decode('latin-1'), 'family': family,
                      'port': port, 'addr': strings(rest[3:])[0] if port is not None else None})
        else:
            self.log({'cmd': stage, 'args': strings(data)})
        if cmd in (b'A', b'Q'):
            self.content = b''
            return cmd != b'Q'
        return self.answer(stage)

    def run(self):
        try:
            while True:
                (length,) = struct.unpack('>I', self.read(4))
                body = self.read(length)
                cmd, data = body[:1], body[1:]
                if cmd == b'O':
                    ok = self.negotiate(data)
                else:
                    ok = self.event(cmd, data)
                if not ok:
                    break
        except (EOFError, OSError):
            pass
        finally:
            self.log({'cmd': 'closed'})
            try:
                self.conn.close()
            except OSError:
                pass


def load_script(path):
    script = {}
    with open(path) as f:
        for line in f:
            words = line.split()
            if words and not words[0].startswith('#'):
                script[words[0]] = words[1:]
    return script


def listen(spec):
    kind, _, where = spec.partition(':')
    if kind == 'unix':
        if os.path.exists(where):
            os.unlink(where)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(where)
    else:
        host, _, port = where.rpartition(':')
        s = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host.strip('[]'), int(port)))
    s.listen(64)
    return s


def serve(spec, script_path, record):
    script = load_script(script_path)
    lock = threading.Lock()
    server = listen(spec)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=Session(conn, script, record, lock).run, daemon=True).start()


def show(record):
    """The record as lines a test can grep: "mail <a@b> SIZE=10", "macro mail {mail_addr}=a@b"."""
    with open(record) as f:
        for line in f:
            e = json.loads(line)
            cmd = e['cmd']
            if cmd == 'macro':
                print('macro', e['stage'], ' '.join('%s=%s' % kv for kv in e['macros'].items()))
            elif cmd == 'connect':
                print('connect', e['host'], e['family'], e['port'], e['addr'])
            elif cmd == 'optneg':
                print('optneg', e['version'], hex(e['actions']), hex(e['steps']))
            elif cmd == 'body':
                print('body', json.dumps(e['data']))
            elif e.get('args'):
                print(cmd, ' '.join(json.dumps(a) if any(c in a for c in ' \n\r\t') else a
                                   for a in e['args']))
            else:
                print(cmd)


if __name__ == '__main__':
    if len(sys.argv) == 5 and sys.argv[1] == 'serve':
        serve(sys.argv[2], sys.argv[3], sys.argv[4])
    elif len(sys.argv) == 3 and sys.argv[1] == 'show':
        show(sys.argv[2])
    else:
        sys.exit(__doc__)
