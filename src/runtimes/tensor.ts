/** Checks shared by every runtime's `run`. */

export function elementCount(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Throws when `input` does not hold exactly the values `shape` describes. */
export function assertInputFitsShape(input: Float32Array, shape: readonly number[]): void {
  const expected = elementCount(shape);
  if (expected !== input.length) {
    throw new Error(`input has ${input.length} values but shape [${shape.join(', ')}] needs ${expected}`);
  }
}
