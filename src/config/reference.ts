/**
 * Renders docs/CONFIG.md from the schema, so the reference can never drift from what the agent
 * accepts (a test compares the committed file with this output).
 */
import { configSchema } from './schema.js';
import { envVariables } from './load.js';

interface Node {
  /** A list for settings that take one value or a list (model.runtime, model.precision). */
  type?: string | readonly string[];
  pattern?: string;
  description?: string;
  default?: unknown;
  enum?: readonly unknown[];
  minimum?: number;
  maximum?: number;
  properties?: Record<string, Node>;
  items?: Node;
  'x-restart'?: boolean;
}

function fmt(v: unknown): string {
  if (v === undefined) return '';
  if (v === '') return '`""`';
  return '`' + JSON.stringify(v) + '`';
}

export function renderConfigReference(): string {
  const env = new Map(envVariables().map((v) => [v.path.join('.'), v.name]));
  const rows: string[] = [];
  // `x-restart` on an object covers every setting in it.
  const walk = (node: Node, at: string[], restartAbove = false): void => {
    const restart = restartAbove || node['x-restart'] === true;
    if (node.type === 'object' && node.properties && Object.keys(node.properties).length > 0) {
      for (const [k, child] of Object.entries(node.properties)) walk(child, [...at, k], restart);
      return;
    }
    const key = at.join('.');
    let type = typeof node.type === 'string' ? node.type : 'any';
    if (node.enum) type = node.enum.map((e) => String(e)).join(' \\| ');
    if (node.type === 'array' && node.items?.enum) type = `list of ${node.items.enum.map((e) => String(e)).join(' \\| ')}`;
    else if (node.type === 'array') type = `list of ${String(node.items?.type ?? 'any')}`;
    else if (Array.isArray(node.type) && node.type.includes('array')) {
      // one value (pattern ^(a|b)$) or a list of the items' enum
      const one = /^\^\((.*)\)\$$/.exec(node.pattern ?? '')?.[1]?.split('|') ?? ['string'];
      type = `${one.join(' \\| ')}, or a list of ${(node.items?.enum ?? []).map((e) => String(e)).join(' \\| ')}`;
    }
    const range = node.minimum !== undefined || node.maximum !== undefined ? ` (${node.minimum ?? ''}..${node.maximum ?? ''})` : '';
    const notes = [node.description ?? '', restart ? '**restart required**' : ''].filter(Boolean).join('; ');
    rows.push(`| \`${key}\` | ${type}${range} | ${fmt(node.default)} | \`${env.get(key) ?? ''}\` | ${notes.replace(/\|/g, '\\|')} |`);
  };
  walk(configSchema, []);
  return [
    '# Device config reference',
    '',
    '<!-- Generated from src/config/schema.ts by `edge-agent config-reference`; a test keeps it in sync. -->',
    '',
    'A device config is one YAML file (examples in `device-configs/`). Every setting is optional; the',
    'defaults below apply. Precedence, lowest first: defaults, the YAML file, the state-dir overrides',
    '(`<stateDir>/config-overrides.json`, written by the fleet `set-config` command; `edge-agent run` only),',
    'environment variables, command-line flags (`--inbox`, `--state-dir`, `--mqtt-url`, `--device-id`).',
    'Environment and flags win over a remote change on purpose: they are how the operator on the box pins',
    'a value (`set-config` reports such settings as `pinned`). Settings marked **restart required** are',
    'stored by `set-config` and take effect at the next start; the others apply at once (docs/MQTT.md).',
    '',
    '- Environment variables are derived from the setting path: `EDGE_AGENT_` + the path in',
    '  SCREAMING_SNAKE_CASE with `__` between levels. Lists take `a,b,c` or YAML `[a, b]`.',
    '- Relative paths resolve against the working directory. Paths of secret files may use',
    '  `${CREDENTIALS_DIRECTORY}` (systemd `LoadCredential=`).',
    '- Secrets (MQTT password, TLS key) come from files; `mqtt.password` inline or from the environment',
    '  is accepted but never shown by `get-config` or the logs.',
    '- A bad config refuses to start (exit 1) listing every problem as `path: message (line N)`;',
    '  `edge-agent validate-config FILE` checks a file without starting (`--offline` skips checks of',
    '  referenced files, for a config meant for another machine).',
    '',
    '| setting | type | default | environment | notes |',
    '|---|---|---|---|---|',
    ...rows,
    '',
  ].join('\n');
}
