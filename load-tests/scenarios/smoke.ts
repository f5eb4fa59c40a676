// smoke: one request a second for 5 s, text and 1-image: run it first against a new deployment.
// The request mix, the arrival rate and the thresholds are in lib/profiles.ts.
import type { Options } from 'k6/options';
import { iteration, scenarioOptions, summaryHandler } from '../lib/scenario.ts';

export const options: Options = scenarioOptions('smoke');
export const handleSummary = summaryHandler('smoke');

export default function (): void {
  iteration('smoke');
}
