// The hash that names a list of sub-images on the wire (`content_hash` of the encoder's Encode
// and Lookup): the preprocessor computes it over its output in the worker thread that made it
// (PreprocessResponse.sub_images_hash, which the gateway passes on), the encoder over what it
// receives (it trusts no caller's hash), and they must agree byte for byte, so both use this
// one function. Each computes it once per image: a pass over every pixel.
import { createHash } from 'node:crypto';

/** One sub-image as hashed: `pixels` is uint8 CHW, 3 × height × width bytes. */
export interface HashedSubImage {
  height: number;
  width: number;
  pixels: Uint8Array;
}

/** Prefixes the hashed bytes; a change to the layout below must change it. */
const HASH_DOMAIN = 'loupe.v1.Encoder/sub_images/sha256/1\0';

/**
 * The `content_hash` of an Encode or Lookup request: SHA-256 over the sub-images in order —
 * a domain tag, their count, then per sub-image its height, width and pixel byte count
 * (little-endian uint32 each) followed by its uint8 CHW pixels. It covers everything the
 * embeddings depend on besides the model and the output dtype, which the cache key adds (with
 * the split flag). Callers compute it over the sub-images they send with this function (the
 * preprocessor over its output; the gateway takes that, or computes it when a preprocessor sent
 * none).
 */
export function subImagesHash(subImages: readonly HashedSubImage[]): Buffer {
  const hash = createHash('sha256').update(HASH_DOMAIN);
  const count = Buffer.alloc(4);
  count.writeUInt32LE(subImages.length);
  hash.update(count);
  for (const { height, width, pixels } of subImages) {
    const header = Buffer.alloc(12);
    header.writeUInt32LE(height, 0);
    header.writeUInt32LE(width, 4);
    header.writeUInt32LE(pixels.byteLength, 8);
    hash.update(header).update(pixels);
  }
  return hash.digest();
}
