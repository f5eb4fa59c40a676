/** The container formats the decoder accepts. */
export type ImageFormat = 'jpeg' | 'png' | 'gif' | 'webp' | 'tiff' | 'avif';

export const ACCEPTED_FORMATS: readonly ImageFormat[] = [
  'jpeg',
  'png',
  'gif',
  'webp',
  'tiff',
  'avif',
];

export type SniffResult = { format: ImageFormat } | { format: undefined; looksLike: string };

function startsWith(bytes: Uint8Array, prefix: readonly number[], offset = 0): boolean {
  if (bytes.length < offset + prefix.length) return false;
  return prefix.every((b, i) => bytes[offset + i] === b);
}

function ascii(bytes: Uint8Array, start: number, end: number): string {
  return String.fromCharCode(...bytes.subarray(start, Math.min(end, bytes.length)));
}

/** The brands of an ISO-BMFF `ftyp` box at the start of the file, or undefined. */
function ftypBrands(bytes: Uint8Array): string[] | undefined {
  if (bytes.length < 16 || ascii(bytes, 4, 8) !== 'ftyp') return undefined;
  const size = ((bytes[0]! << 24) | (bytes[1]! << 16) | (bytes[2]! << 8) | bytes[3]!) >>> 0;
  const end = Math.min(size >= 16 ? size : 16, bytes.length);
  const brands = [ascii(bytes, 8, 12)];
  for (let i = 16; i + 4 <= end; i += 4) brands.push(ascii(bytes, i, i + 4));
  return brands;
}

const OTHER_SIGNATURES: ReadonlyArray<{
  prefix: readonly number[];
  offset?: number;
  name: string;
}> = [
  { prefix: [0x25, 0x50, 0x44, 0x46], name: 'PDF' }, // %PDF
  { prefix: [0x42, 0x4d], name: 'BMP' },
  { prefix: [0x00, 0x00, 0x01, 0x00], name: 'ICO' },
  { prefix: [0x38, 0x42, 0x50, 0x53], name: 'PSD' }, // 8BPS
  { prefix: [0xff, 0x0a], name: 'JPEG XL' },
  { prefix: [0x00, 0x00, 0x00, 0x0c, 0x4a, 0x58, 0x4c, 0x20], name: 'JPEG XL' },
  { prefix: [0x00, 0x00, 0x00, 0x0c, 0x6a, 0x50, 0x20, 0x20], name: 'JPEG 2000' },
  { prefix: [0xff, 0x4f, 0xff, 0x51], name: 'JPEG 2000' },
  { prefix: [0x49, 0x49, 0x2b, 0x00], name: 'BigTIFF' },
  { prefix: [0x4d, 0x4d, 0x00, 0x2b], name: 'BigTIFF' },
  { prefix: [0x1f, 0x8b], name: 'gzip (e.g. SVGZ)' },
];

/**
 * Identifies the container from its magic bytes, before any decoder sees them. Only the six
 * accepted formats pass; everything else (SVG and PDF above all, which libvips could render
 * and which may reference external resources) is named and refused.
 *
 * ```
 * JPEG  FF D8 FF                 PNG   89 'PNG' 0D 0A 1A 0A
 * GIF   'GIF87a' | 'GIF89a'      WebP  'RIFF' <size> 'WEBP'
 * TIFF  'II' 2A 00 | 'MM' 00 2A  AVIF  <size> 'ftyp' with brand 'avif' or 'avis'
 * ```
 */
export function sniffImageFormat(bytes: Uint8Array): SniffResult {
  if (startsWith(bytes, [0xff, 0xd8, 0xff])) return { format: 'jpeg' };
  if (startsWith(bytes, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return { format: 'png' };
  const head6 = ascii(bytes, 0, 6);
  if (head6 === 'GIF87a' || head6 === 'GIF89a') return { format: 'gif' };
  if (ascii(bytes, 0, 4) === 'RIFF' && ascii(bytes, 8, 12) === 'WEBP') return { format: 'webp' };
  if (startsWith(bytes, [0x49, 0x49, 0x2a, 0x00]) || startsWith(bytes, [0x4d, 0x4d, 0x00, 0x2a])) {
    return { format: 'tiff' };
  }
  const brands = ftypBrands(bytes);
  if (brands) {
    if (brands.includes('avif') || brands.includes('avis')) return { format: 'avif' };
    const isHeif = brands.some((b) => /^(hei[cmsx]|hev[cmsx]|mif1|msf1)$/.test(b));
    return {
      format: undefined,
      looksLike: `${isHeif ? 'HEIF/HEIC' : 'ISO-BMFF'} (ftyp brands ${brands.join(', ')})`,
    };
  }
  for (const { prefix, offset, name } of OTHER_SIGNATURES) {
    if (startsWith(bytes, prefix, offset)) return { format: undefined, looksLike: name };
  }
  // Text: SVG, XML or HTML, possibly after a byte-order mark and white space.
  const text = ascii(bytes, 0, 512)
    .replace(/^\uFEFF|^\xEF\xBB\xBF/, '')
    .trimStart()
    .toLowerCase();
  if (text.startsWith('<svg') || (text.startsWith('<?xml') && text.includes('<svg'))) {
    return { format: undefined, looksLike: 'SVG' };
  }
  if (text.startsWith('<')) return { format: undefined, looksLike: 'XML/HTML text' };
  return { format: undefined, looksLike: 'an unrecognised format' };
}
