/**
 * pino JSON logs (journald keeps stdout), one child logger per component with its own level.
 * Anything that could identify a patient is redacted by key wherever it appears.
 */
import { pino, type Logger, type LevelWithSilent } from 'pino';

export const REDACT_KEYS = [
  'patientName',
  'PatientName',
  'patientId',
  'PatientID',
  'patientBirthDate',
  'PatientBirthDate',
  'accessionNumber',
  'AccessionNumber',
  'identifiers',
  'password',
];

export interface LoggerOptions {
  level: LevelWithSilent;
  components?: Record<string, LevelWithSilent>;
  /** 1 = stdout (daemon), 2 = stderr (CLI commands whose stdout is data). */
  fd?: 1 | 2;
}

export interface AgentLogger {
  root: Logger;
  component(name: string): Logger;
  flush(): Promise<void>;
}

export function createLogger(opts: LoggerOptions): AgentLogger {
  const components = opts.components ?? {};
  // The root must let through the most verbose level any component asks for; children filter.
  const order: LevelWithSilent[] = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];
  const levels = [opts.level, ...Object.values(components)];
  const minIndex = Math.min(...levels.map((l) => order.indexOf(l)));
  const root = pino(
    {
      level: order[minIndex] ?? 'info',
      base: { pid: process.pid },
      redact: {
        paths: REDACT_KEYS.flatMap((k) => [k, `*.${k}`, `*.*.${k}`]),
        censor: '[redacted]',
      },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    pino.destination({ fd: opts.fd ?? 1, sync: false }),
  );
  return {
    root,
    component(name: string): Logger {
      return root.child({ component: name }, { level: components[name] ?? opts.level });
    },
    flush(): Promise<void> {
      return new Promise((resolve) => root.flush(() => resolve()));
    },
  };
}
