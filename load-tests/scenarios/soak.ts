// soak: RATE requests/s for an hour (DURATION overrides): leaks show late in the run.
// The request mix, the arrival rate and the thresholds are in lib/profiles.ts.
import type { Options } from 'k6/options';
import { iteration, scenarioOptions, summaryHandler } from '../lib/scenario.ts';

export const options: Options = scenarioOptions('soak');
export const handleSummary = summaryHandler('soak');

export default function (): void {
  iteration('soak');
}
