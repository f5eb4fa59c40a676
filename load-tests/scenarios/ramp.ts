// ramp: 1 → 4 × RATE requests/s in 1-minute steps, uncached images: find the knee.
// The request mix, the arrival rate and the thresholds are in lib/profiles.ts.
import type { Options } from 'k6/options';
import { iteration, scenarioOptions, summaryHandler } from '../lib/scenario.ts';

export const options: Options = scenarioOptions('ramp');
export const handleSummary = summaryHandler('ramp');

export default function (): void {
  iteration('ramp');
}
