/**
 * A real sd_notify receiver, the way systemd listens: an AF_UNIX datagram socket (a path or an
 * abstract `@name`), bound by /usr/bin/python3 because Node itself has no unix datagram sockets and the
 * receiver should not be the package under test. Each datagram arrives with the time it was read.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

export const python3Available = spawnSync('python3', ['--version']).status === 0;

const RECEIVER = `
import json, socket, sys, time
addr = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("\\0" + addr[1:] if addr.startswith("@") else addr)
print(json.dumps({"bound": True}), flush=True)
while True:
    data = s.recv(65536)
    print(json.dumps({"at": time.time() * 1000, "msg": data.decode("utf-8", "replace")}), flush=True)
`;

export interface Datagram {
  /** Epoch ms when the receiver read it. */
  at: number;
  /** Assignments in the datagram (KEY -> VALUE). */
  fields: Record<string, string>;
  raw: string;
}

export class NotifySocket {
  readonly datagrams: Datagram[] = [];
  private constructor(
    readonly address: string,
    private readonly proc: ChildProcess,
  ) {}

  /** Binds a fresh socket: a file in a temp dir, or an abstract name when `abstract` is true. */
  static async open(abstract = false): Promise<NotifySocket> {
    const address = abstract
      ? `@edge-agent-test-${process.pid}-${Math.random().toString(16).slice(2)}`
      : path.join(mkdtempSync(path.join(tmpdir(), 'sdnotify-')), 'notify');
    const proc = spawn('python3', ['-c', RECEIVER, address], { stdio: ['ignore', 'pipe', 'pipe'] });
    const sock = new NotifySocket(address, proc);
    let stderr = '';
    proc.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    await new Promise<void>((resolve, reject) => {
      let buf = '';
      proc.stdout.setEncoding('utf8');
      proc.stdout.on('data', (chunk: string) => {
        buf += chunk;
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = JSON.parse(buf.slice(0, i)) as { bound?: boolean; at?: number; msg?: string };
          buf = buf.slice(i + 1);
          if (line.bound) resolve();
          else if (line.msg !== undefined) {
            const fields: Record<string, string> = {};
            for (const kv of line.msg.split('\n')) {
              const eq = kv.indexOf('=');
              if (eq > 0) fields[kv.slice(0, eq)] = kv.slice(eq + 1);
            }
            sock.datagrams.push({ at: line.at!, fields, raw: line.msg });
          }
        }
      });
      proc.on('exit', (code) => reject(new Error(`notify receiver exited ${code}: ${stderr}`)));
    });
    return sock;
  }

  with(key: string, value?: string): Datagram[] {
    return this.datagrams.filter((d) => key in d.fields && (value === undefined || d.fields[key] === value));
  }

  close(): void {
    this.proc.kill();
  }
}
