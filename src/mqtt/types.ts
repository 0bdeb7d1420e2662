/**
 * Contracts between the MQTT link and the rest of the agent.
 *
 * The outbox is owned by the store (SQLite): it is the only durable copy of a result until the broker
 * has acknowledged it. The link never keeps its own copy beyond the rows currently in flight.
 */

/** One durable message waiting for the broker. `seq` is a positive, strictly increasing integer. */
export interface OutboxRow {
  seq: number;
  topic: string;
  payload: string;
}

export interface OutboxSource {
  /** Up to `limit` rows with seq > afterSeq, ascending. */
  next(afterSeq: number, limit: number): OutboxRow[];
  /** Called once the broker acknowledged (PUBACK) the row: delete it (and whatever follows from that). */
  ack(seq: number): void;
}

/** Retained availability payload on `<base>/<device>/state`. */
export type AvailabilityState = 'online' | 'offline';

export interface StatePayload {
  state: AvailabilityState;
  [key: string]: unknown;
}
