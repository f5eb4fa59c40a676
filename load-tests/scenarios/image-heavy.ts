// image-heavy: 3 large uncached images per request, split on: the encoder's worst case.
// The request mix, the arrival rate and the thresholds are in lib/profiles.ts.
import type { Options } from 'k6/options';
import { iteration, scenarioOptions, summaryHandler } from '../lib/scenario.ts';

export const options: Options = scenarioOptions('image-heavy');
export const handleSummary = summaryHandler('image-heavy');

export default function (): void {
  iteration('image-heavy');
}
