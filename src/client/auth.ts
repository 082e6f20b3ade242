/** The token the client authenticates with: the app's JWT, or its provider's, kept until it nears expiry. */
import { ClientError, ClientErrorCode } from './errors.js';
import { tokenExpiresAt } from './token.js';
import type { TokenProvider } from './types.js';

export class TokenSource {
  private token: string | undefined;
  private expiry: number | undefined;

  constructor(
    private readonly source: string | TokenProvider,
    private readonly refreshMargin: number,
  ) {}

  /** The token last used, if any (for download links). */
  get current(): string | undefined {
    return typeof this.source === 'string' ? this.source : this.token;
  }

  /** When the last token from the provider expires (ms since the epoch), if it says. */
  get expiresAt(): number | undefined {
    return this.expiry;
  }

  /** The token to send; `fresh` asks the provider for a new one. */
  async get(fresh: boolean): Promise<string> {
    const source = this.source;
    if (typeof source === 'string') return source;
    const reusable = this.expiry === undefined || this.expiry - Date.now() > this.refreshMargin;
    if (!fresh && this.token && reusable) return this.token;
    let token: unknown;
    try {
      token = await source();
    } catch (err) {
      throw new ClientError(ClientErrorCode.TokenError, `token callback failed: ${(err as Error)?.message ?? err}`, { cause: err });
    }
    if (typeof token !== 'string' || token.length === 0) {
      throw new ClientError(ClientErrorCode.TokenError, 'token callback returned no token');
    }
    this.token = token;
    this.expiry = tokenExpiresAt(token);
    return token;
  }

  /** The server refused the token: never offer it again. */
  forget(): void {
    this.token = undefined;
  }

  /** How long until the token should be refreshed, or undefined when it never is. */
  refreshDelay(): number | undefined {
    if (typeof this.source !== 'function' || this.expiry === undefined) return undefined;
    const margin = Math.min(this.refreshMargin, Math.max(0, this.expiry - Date.now()) / 2);
    // Not more often than every 500 ms, even if the callback keeps returning the same token.
    return Math.max(500, this.expiry - Date.now() - margin);
  }
}
