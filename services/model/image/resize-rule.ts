export interface ResizeBounds {
  /** Each output side is at least this many pixels (378 for idefics2-8b). */
  shortestEdge: number;
  /** The longer side is brought down to this many pixels (980 for idefics2-8b). */
  longestEdge: number;
}

export interface Size {
  height: number;
  width: number;
}

/**
 * Output size of one (sub-)image, as `get_resize_output_image_size` of the reference
 * (docs/model.md §7 step 6):
 *
 * ```
 * ar = width / height                                     (float64)
 * if width >= height and width > longest:  width = longest;  height = int(longest / ar)
 * elif height > width and height > longest: height = longest; width = int(longest * ar)
 * height = max(height, shortest); width = max(width, shortest)
 * ```
 *
 * `int()` truncates toward zero, and each side is clamped to `shortestEdge` on its own, so
 * the aspect ratio can change (300x200 becomes 378x378). Nothing is upscaled unless a side
 * is below `shortestEdge`.
 */
export function resizeOutputSize(
  height: number,
  width: number,
  { shortestEdge, longestEdge }: ResizeBounds,
): Size {
  const aspectRatio = width / height;
  let h = height;
  let w = width;
  if (w >= h && w > longestEdge) {
    w = longestEdge;
    h = Math.trunc(w / aspectRatio);
  } else if (h > w && h > longestEdge) {
    h = longestEdge;
    w = Math.trunc(h * aspectRatio);
  }
  return { height: Math.max(h, shortestEdge), width: Math.max(w, shortestEdge) };
}
