import { readFileSync } from 'node:fs';
import { shippedPath } from '../src/config/load.js';

export const AGENT_VERSION: string = (JSON.parse(readFileSync(shippedPath('package.json'), 'utf8')) as { version: string }).version;
