/** Hand-made JWTs, for what jose will not sign: alg none, HS keyed with a PEM, odd headers. */
import { constants, createHmac, sign as cryptoSign, type KeyObject } from 'node:crypto';

export const b64 = (v: unknown): string => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');

/** header.payload.signature, HS256-signed with `hmacKey` when given, else with an empty signature. */
export function handmade(header: Record<string, unknown>, payload: Record<string, unknown>, hmacKey?: string | Buffer): string {
  const input = `${b64(header)}.${b64(payload)}`;
  const sig = hmacKey === undefined ? '' : createHmac('sha256', hmacKey).update(input).digest('base64url');
  return `${input}.${sig}`;
}

/**
 * A correctly signed compact JWS with any header and payload, signed with node:crypto (so jose's
 * own checks on signing, e.g. `crit`, do not stop a test from building what an attacker can).
 */
export function signRaw(alg: string, key: KeyObject | string | Buffer, header: Record<string, unknown>, payload: Record<string, unknown> | string): string {
  const input = `${b64({ alg, ...header })}.${b64(payload)}`;
  const data = Buffer.from(input);
  const hash = `sha${alg.slice(2)}`;
  let sig: Buffer;
  if (alg.startsWith('HS')) sig = createHmac(hash, key).update(data).digest();
  else if (alg.startsWith('RS')) sig = cryptoSign(hash, data, key);
  else if (alg.startsWith('PS')) sig = cryptoSign(hash, data, { key: key as KeyObject, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: Number(alg.slice(2)) / 8 });
  else if (alg.startsWith('ES')) sig = cryptoSign(`sha${alg === 'ES512' ? 512 : alg.slice(2)}`, data, { key: key as KeyObject, dsaEncoding: 'ieee-p1363' });
  else if (alg === 'EdDSA') sig = cryptoSign(null, data, key);
  else throw new Error(`cannot sign ${alg}`);
  return `${input}.${sig.toString('base64url')}`;
}
