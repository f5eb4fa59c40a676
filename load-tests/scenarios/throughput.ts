// throughput: a constant RATE requests/s (DURATION, default 60 s), 1 image, half of them cached.
// The request mix, the arrival rate and the thresholds are in lib/profiles.ts.
import type { Options } from 'k6/options';
import { iteration, scenarioOptions, summaryHandler } from '../lib/scenario.ts';

export const options: Options = scenarioOptions('throughput');
export const handleSummary = summaryHandler('throughput');

export default function (): void {
  iteration('throughput');
}
