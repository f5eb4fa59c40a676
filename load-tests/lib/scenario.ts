// Builds a k6 scenario from its profile (lib/profiles.ts): a ramping arrival rate whose stages
// are the profile's, × RATE requests/s; the profile's thresholds; the end-of-test summary.
import type { Options } from 'k6/options';
import { chat } from './chat.ts';
import { DURATION_OVERRIDE, RATE, SUMMARY_DIR } from './config.ts';
import { chatBody } from './payloads.ts';
import { expectedIterations, k6Thresholds, PROFILES, type ScenarioName } from './profiles.ts';
import { summaryOutputs, type SummaryData } from './summary.ts';

/** `90s`, `10m`, `1h` → seconds (DURATION's forms). */
function durationSeconds(text: string): number {
  const m = /^(\d+)(s|m|h)$/.exec(text);
  if (!m) throw new Error(`DURATION must look like 90s, 10m or 1h, not ${text}`);
  return Number(m[1]) * { s: 1, m: 60, h: 3600 }[m[2] as 's' | 'm' | 'h'];
}

export function scenarioOptions(name: ScenarioName): Options {
  const profile = PROFILES[name];
  const single = profile.stages.length === 1;
  const peak = Math.max(...profile.stages.map((s) => s.rateFactor)) * RATE;
  return {
    scenarios: {
      [name]: {
        executor: 'ramping-arrival-rate',
        startRate: profile.stages[0]!.rateFactor * RATE,
        timeUnit: '1s',
        preAllocatedVUs: Math.max(4, Math.ceil(peak * 4)),
        maxVUs: Math.max(16, Math.ceil(peak * 40)),
        stages: profile.stages.map((s) => ({
          target: s.rateFactor * RATE,
          duration: single && DURATION_OVERRIDE ? DURATION_OVERRIDE : `${s.seconds}s`,
        })),
      },
    },
    thresholds: {
      ...k6Thresholds(
        profile.limits,
        expectedIterations(
          profile,
          RATE,
          single && DURATION_OVERRIDE ? durationSeconds(DURATION_OVERRIDE) : undefined,
        ),
      ),
      ...(profile.limits.errorRate < 1 ? { loupe_errors: [`count<${Math.max(1, 0)}`] } : {}),
    },
  };
}

export function iteration(name: ScenarioName): void {
  chat(chatBody(PROFILES[name].mix));
}

/** A scenario's handleSummary: text on stdout, JSON and text in SUMMARY_DIR. */
export function summaryHandler(name: string): (data: SummaryData) => Record<string, string> {
  return (data) => summaryOutputs(name, data, SUMMARY_DIR);
}
