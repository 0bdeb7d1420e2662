/** A pipeline on a real state store in `root` (inbox, done/, quarantine/, state/), no broker, defaults of the tests. */
import path from 'node:path';
import { defaultDecodeOptions } from '../../src/decode/index.js';
import type { Classifier } from '../../src/pipeline/classifier.js';
import { Pipeline } from '../../src/pipeline/pipeline.js';
import type { StateStore } from '../../src/store/index.js';
import { testLogger } from '../mqtt/util.js';

export function testPipeline(root: string, inbox: string, store: StateStore, classifier: Classifier, failures: string[]): Pipeline {
  return new Pipeline(
    {
      deviceId: 'dev',
      inbox,
      doneDir: path.join(root, 'done'),
      quarantineDir: path.join(root, 'quarantine'),
      afterPublish: 'move',
      queueCapacity: 64,
      concurrency: 2,
      maxAttempts: 3,
      maxFileBytes: 1 << 30,
      decode: defaultDecodeOptions(),
      privacy: { allowUids: false, salt: 'salt' },
      topics: { result: 'imaging/dev/result', error: 'imaging/dev/error' },
    },
    store,
    classifier,
    testLogger(),
    { onFailure: (code) => failures.push(code) },
  );
}
