// Any scenario with true streaming TTFT, through the xk6-sse extension:
//   xk6 build --with github.com/phymbert/xk6-sse
//   ./k6 run -e SCENARIO=throughput -e HOST=... -e API_KEY=... load-tests/sse.ts
// The scenario scripts under scenarios/ run on a stock k6 and time the first byte instead.
import type { Options } from 'k6/options';
import { chatSse } from './lib/chat-sse.ts';
import { MAX_TOKENS, MODEL } from './lib/config.ts';
import { chatRequestK6 } from './lib/payloads.ts';
import { PROFILES, type ScenarioName } from './lib/profiles.ts';
import { scenarioOptions, summaryHandler } from './lib/scenario.ts';

const name = (__ENV.SCENARIO ?? 'smoke') as ScenarioName;
if (!(name in PROFILES))
  throw new Error(`SCENARIO must be one of ${Object.keys(PROFILES).join(', ')}`);

export const options: Options = scenarioOptions(name);
export const handleSummary = summaryHandler(`${name}-sse`);

export default function (): void {
  chatSse(chatRequestK6(PROFILES[name].mix, { model: MODEL, maxTokens: MAX_TOKENS, stream: true }));
}
