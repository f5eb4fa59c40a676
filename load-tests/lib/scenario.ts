// Builds a k6 scenario from its profile (lib/profiles.ts): a ramping arrival rate whose stages
// are the profile's, × RATE requests/s; the profile's thresholds.
import type { Options } from 'k6/options';
import { chat } from './chat.ts';
import { DURATION_OVERRIDE, RATE } from './config.ts';
import { chatBody } from './payloads.ts';
import { k6Thresholds, PROFILES, type ScenarioName } from './profiles.ts';

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
      ...k6Thresholds(profile.limits),
      ...(profile.limits.errorRate < 1 ? { loupe_errors: [`count<${Math.max(1, 0)}`] } : {}),
    },
  };
}

export function iteration(name: ScenarioName): void {
  chat(chatBody(PROFILES[name].mix));
}
