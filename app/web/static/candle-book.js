// The candles of one symbol and interval, oldest first, as the API and the /ws candles channel give them.
// Pure (no DOM, no chart): the dashboard applies each update here and learns what the chart must redraw.

// Candles kept per view; older ones fall off the left edge (the API serves at most 1,000 per request anyway).
export const MAX_CANDLES = 2000;

// Whether `next` is a newer state of the same candle than `current`: a revision (a late trade after a repaired
// gap) replaces what it revises; a closed candle settles the open one; an open candle only grows.
export function supersedes(next, current) {
  if (next.revision !== current.revision) return next.revision > current.revision;
  if (next.closed !== current.closed) return next.closed;
  return next.last_trade_id >= current.last_trade_id;
}

export function openTimeMs(candle) {
  return Date.parse(candle.open_time);
}

export class CandleBook {
  constructor(maxCandles = MAX_CANDLES) {
    this.maxCandles = maxCandles;
    this.candles = [];
  }

  // Replaces everything (history from /api/candles, oldest first).
  load(candles) {
    this.candles = [...candles].sort((a, b) => openTimeMs(a) - openTimeMs(b)).slice(-this.maxCandles);
  }

  last() {
    return this.candles.length ? this.candles[this.candles.length - 1] : null;
  }

  // Returns what the chart must do: "none" (stale update), "tail" (the last candle changed or a new one was
  // appended), "historical" (an older candle was replaced in place) or "reset" (the set changed shape).
  apply(candle) {
    const time = openTimeMs(candle);
    const candles = this.candles;
    const last = this.last();
    if (last === null || time > openTimeMs(last)) {
      candles.push(candle);
      if (candles.length > this.maxCandles) {
        candles.shift();
        return "reset";
      }
      return "tail";
    }
    const index = this.indexOf(time);
    if (index < 0) {
      if (candles.length >= this.maxCandles && time < openTimeMs(candles[0])) return "none";
      candles.splice(-index - 1, 0, candle);
      if (candles.length > this.maxCandles) candles.shift();
      return "reset";
    }
    if (!supersedes(candle, candles[index])) return "none";
    candles[index] = candle;
    return index === candles.length - 1 ? "tail" : "historical";
  }

  // Binary search by open time: the index, or -(insertion point) - 1.
  indexOf(time) {
    let low = 0;
    let high = this.candles.length - 1;
    while (low <= high) {
      const middle = (low + high) >> 1;
      const middleTime = openTimeMs(this.candles[middle]);
      if (middleTime === time) return middle;
      if (middleTime < time) low = middle + 1;
      else high = middle - 1;
    }
    return -low - 1;
  }
}
