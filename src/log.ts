/**
 * pino JSON logs (journald keeps stdout), one child logger per component with its own level.
 * Anything that could identify a patient is redacted by key wherever it appears (up to four levels
 * deep, arrays included): the DICOM patient/visit attributes under their keyword and camelCase names,
 * raw Study/Series/SOP Instance UIDs (results carry salted hashes; logs never need the raw ones), and
 * secrets. Values inside free text (an error message) are not redacted: code must not put them there,
 * and tests/security/phi.test.ts checks the agent's real log output for the fixtures' identifiers.
 */
import { pino, type DestinationStream, type Logger, type LevelWithSilent } from 'pino';

/** DICOM attributes that identify a patient or a visit (PS3.15 Annex E basic profile, patient/visit part). */
const PHI_KEYS = [
  'PatientName',
  'PatientID',
  'PatientBirthDate',
  'PatientBirthTime',
  'PatientAddress',
  'PatientTelephoneNumbers',
  'PatientMotherBirthName',
  'OtherPatientIDs',
  'OtherPatientIDsSequence',
  'OtherPatientNames',
  'PatientBirthName',
  'MedicalRecordLocator',
  'AccessionNumber',
  'IssuerOfPatientID',
  'ReferringPhysicianName',
  'PerformingPhysicianName',
  'OperatorsName',
  'StudyID',
  'StudyInstanceUID',
  'SeriesInstanceUID',
  'SOPInstanceUID',
];

const camel = (k: string): string =>
  k
    .replace(/^[A-Z]+(?=[A-Z][a-z]|$)|^[A-Z]/, (m) => m.toLowerCase())
    .replace(/UID$/, 'Uid')
    .replace(/IDs$/, 'Ids')
    .replace(/ID$/, 'Id');

export const REDACT_KEYS = [
  ...new Set([
    ...PHI_KEYS,
    ...PHI_KEYS.map(camel),
    // spellings in use in src/ (decode meta, older code)
    'patientID',
    'patientId',
    'identifiers',
    'password',
    'passphrase',
    'privateKey',
    'authorization',
    'token',
  ]),
];

/** Every redacted key at the top and up to four levels down (`*` also matches array indices). */
export const REDACT_PATHS = REDACT_KEYS.flatMap((k) => [k, `*.${k}`, `*.*.${k}`, `*.*.*.${k}`, `*.*.*.*.${k}`]);

export interface LoggerOptions {
  level: LevelWithSilent;
  components?: Record<string, LevelWithSilent>;
  /** 1 = stdout (daemon), 2 = stderr (CLI commands whose stdout is data). */
  fd?: 1 | 2;
  /** Write here instead of fd (tests). */
  stream?: DestinationStream;
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
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    opts.stream ?? pino.destination({ fd: opts.fd ?? 1, sync: false }),
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
