/**
 * Typed errors with stable codes. `code` is what callers branch on and what operators grep for;
 * messages may change, codes may not.
 */
export class SidecarError extends Error {
  readonly code: string;
  /**
   * Trying the same thing again later may work (NATS away, a timeout, a rate limit); false when
   * the request or the configuration itself is wrong.
   */
  readonly temporary: boolean;
  constructor(code: string, message: string, options?: { cause?: unknown; temporary?: boolean }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.temporary = options?.temporary ?? false;
  }
}

/** A configuration value is missing or invalid; the message names the key. */
export class ConfigError extends SidecarError {
  readonly key: string;
  constructor(key: string, message: string) {
    super('config_invalid', `config ${key}: ${message}`);
    this.key = key;
  }
}

/** A token was refused. `code` is one of the AuthErrorCode values. */
export class AuthError extends SidecarError {}

export const AuthErrorCode = {
  Missing: 'token_missing',
  Invalid: 'token_invalid',
  Expired: 'token_expired',
  TooLarge: 'token_too_large',
  NoSubject: 'token_no_subject',
  NotConfigured: 'auth_not_configured',
} as const;
