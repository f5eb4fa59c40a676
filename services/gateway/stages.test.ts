// Routing between a stage's endpoints. The clients are real grpc-js clients; they connect
// lazily, and nothing here calls them.
import { createHash } from 'node:crypto';
import { credentials } from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { EncoderClient } from '../../proto/gen/loupe/v1/encoder.js';
import { EndpointPool } from './stages.js';

const pools: Array<EndpointPool<EncoderClient>> = [];
afterEach(() => {
  for (const p of pools.splice(0)) p.close();
});

function encoders(addresses: string[]) {
  const pool = new EndpointPool(
    'encoder',
    (a) => new EncoderClient(a, credentials.createInsecure()),
    1 << 20,
  );
  pool.setAddresses(addresses);
  pools.push(pool);
  return pool;
}

const keys = Array.from({ length: 3000 }, (_, i) => createHash('sha256').update(`${i}`).digest());
const addresses = ['10.0.0.1:50052', '10.0.0.2:50052', '10.0.0.3:50052'];

describe('encoder routing by content hash', () => {
  it('sends a key to the same endpoint every time, and spreads keys evenly', () => {
    const pool = encoders(addresses);
    const owner = keys.map((k) => pool.pick(undefined, k).address);
    expect(keys.map((k) => pool.pick(undefined, k).address)).toEqual(owner);
    for (const a of addresses) {
      const share = owner.filter((o) => o === a).length / keys.length;
      expect(share, a).toBeGreaterThan(0.28);
      expect(share, a).toBeLessThan(0.39);
    }
  });

  it('moves only the keys of an endpoint that leaves, and a retry goes to the next owner', () => {
    const before = encoders(addresses);
    const after = encoders(addresses.slice(0, 2));
    let moved = 0;
    for (const k of keys) {
      const was = before.pick(undefined, k);
      const now = after.pick(undefined, k).address;
      if (was.address === addresses[2]) {
        // Its keys go where a retry on the full pool would have gone.
        expect(now).toBe(before.pick(was, k).address);
        moved++;
      } else expect(now).toBe(was.address);
    }
    expect(moved).toBeGreaterThan(0);
  });

  it('without a key, picks the endpoint with the fewest calls outstanding', () => {
    const pool = encoders(addresses);
    pool.endpoints[0]!.outstanding = 2;
    pool.endpoints[1]!.outstanding = 1;
    pool.endpoints[2]!.outstanding = 3;
    expect(pool.pick().address).toBe(addresses[1]);
  });
});
