// spike: 10 × RATE requests/s for 30 s between quiet periods; 429s are expected, recovery is checked.
// The request mix, the arrival rate and the thresholds are in lib/profiles.ts.
import type { Options } from 'k6/options';
import { iteration, scenarioOptions, summaryHandler } from '../lib/scenario.ts';

export const options: Options = scenarioOptions('spike');
export const handleSummary = summaryHandler('spike');

export default function (): void {
  iteration('spike');
}
