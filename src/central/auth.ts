/**
 * Access to central's API and console: one shared secret read from a file (`--token-file`), presented
 * either as `Authorization: Bearer <token>` (CLI, scripts) or as the console's login cookie.
 *
 * The cookie does not carry the token: it carries HMAC-SHA256(token, "edge-central console session"),
 * so a leaked cookie is not the API token, stays valid across central restarts, and is revoked by
 * changing the token file. It is HttpOnly + SameSite=Strict (no cross-site request carries it), and the
 * API's state-changing routes only accept JSON bodies, so a cross-site form cannot drive them either.
 * Comparisons are constant-time.
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';

export const COOKIE_NAME = 'edge_central_session';
const MIN_TOKEN_LENGTH = 16;

export function readTokenFile(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new Error(`token file ${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const token = text.trim();
  if (token.length < MIN_TOKEN_LENGTH) {
    throw new Error(`token file ${file}: the token must be at least ${MIN_TOKEN_LENGTH} characters (e.g. openssl rand -hex 32 > ${file})`);
  }
  if (/\s/.test(token)) throw new Error(`token file ${file}: the token must be one line without spaces`);
  return token;
}

function digest(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

function same(a: string, b: string): boolean {
  return timingSafeEqual(digest(a), digest(b));
}

export class Auth {
  private readonly session: string;

  constructor(private readonly token: string) {
    this.session = createHmac('sha256', token).update('edge-central console session').digest('hex');
  }

  checkToken(candidate: string): boolean {
    return same(candidate, this.token);
  }

  /** The cookie value a successful login sets. */
  sessionValue(): string {
    return this.session;
  }

  cookieHeader(secure: boolean): string {
    return `${COOKIE_NAME}=${this.session}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${7 * 24 * 3600}${secure ? '; Secure' : ''}`;
  }

  static clearCookieHeader(): string {
    return `${COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0`;
  }

  /** How the request authenticated, or null. */
  check(req: IncomingMessage): 'bearer' | 'cookie' | null {
    const h = req.headers.authorization;
    if (typeof h === 'string') {
      const m = /^Bearer\s+(\S+)$/i.exec(h);
      if (m && this.checkToken(m[1] as string)) return 'bearer';
    }
    const cookie = req.headers.cookie;
    if (typeof cookie === 'string') {
      for (const part of cookie.split(';')) {
        const i = part.indexOf('=');
        if (i < 0) continue;
        if (part.slice(0, i).trim() === COOKIE_NAME && same(part.slice(i + 1).trim(), this.session)) return 'cookie';
      }
    }
    return null;
  }
}
