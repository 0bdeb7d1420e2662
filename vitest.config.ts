import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['tests/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Suites start real brokers and agent processes; two cores, so keep the fan-out modest.
    maxWorkers: 2,
    reporters: ['default'],
  },
});
