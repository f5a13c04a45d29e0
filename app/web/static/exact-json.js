// JSON as the API writes it, with decimals kept exact: the API sends prices and quantities as JSON numbers
// with every digit the exchange gave (95234.56); JSON.parse alone would turn them into floats. The reviver's
// third argument (JSON.parse source text access) hands over the number's text, which the table shows as is.

// The decimal fields of ticks and candles (see /openapi.json); integers (ids, counts) stay numbers.
export const DECIMAL_FIELDS = new Set([
  "price", "quantity", "open", "high", "low", "close", "volume", "quote_volume",
  "taker_buy_volume", "taker_buy_quote_volume",
]);

function keepDecimalText(key, value, context) {
  if (typeof value !== "number" || !DECIMAL_FIELDS.has(key)) return value;
  // Without source text access (older browsers), the shortest round-trip text: exact for up to 15 digits.
  return context && typeof context.source === "string" ? context.source : String(value);
}

export function parseExact(text) {
  return JSON.parse(text, keepDecimalText);
}

export async function fetchExact(url, { signal } = {}) {
  const response = await fetch(url, { signal, headers: { Accept: "application/json" } });
  const body = parseExact(await response.text());
  return { status: response.status, ok: response.ok, body };
}
