// The candlestick chart with its volume histogram (lightweight-charts, vendored). Plots floats; the exact
// candles stay in the CandleBook.
import {
  CandlestickSeries, ColorType, CrosshairMode, HistogramSeries, createChart,
} from "./vendor/lightweight-charts.js";
import { openTimeMs } from "./candle-book.js";

const UP = "#26a69a";
const DOWN = "#ef5350";
const UP_VOLUME = "rgba(38, 166, 154, 0.45)";
const DOWN_VOLUME = "rgba(239, 83, 80, 0.45)";

function decimals(text) {
  const point = text.indexOf(".");
  return point < 0 ? 0 : text.length - point - 1;
}

export class CandleChart {
  constructor(container) {
    this.chart = createChart(container, {
      autoSize: true,
      layout: {
        background: { type: ColorType.Solid, color: "#11161d" },
        textColor: "#9aa7b4",
        fontFamily: "ui-sans-serif, system-ui, sans-serif",
        fontSize: 12,
        // The TradingView link the library's licence asks for (a plain link: nothing is loaded from it).
        attributionLogo: true,
      },
      grid: { vertLines: { color: "#1b232d" }, horzLines: { color: "#1b232d" } },
      crosshair: { mode: CrosshairMode.Normal },
      rightPriceScale: { borderColor: "#2a3441" },
      timeScale: {
        borderColor: "#2a3441", timeVisible: true, secondsVisible: false, barSpacing: 12, maxBarSpacing: 36,
        rightOffset: 4,
      },
    });
    this.candles = this.chart.addSeries(CandlestickSeries, {
      upColor: UP, downColor: DOWN, wickUpColor: UP, wickDownColor: DOWN, borderVisible: false,
    });
    this.candles.priceScale().applyOptions({ scaleMargins: { top: 0.08, bottom: 0.28 } });
    // Volume on its own overlay scale, in the bottom fifth.
    this.volume = this.chart.addSeries(HistogramSeries, {
      priceFormat: { type: "volume" }, priceScaleId: "", lastValueVisible: false, priceLineVisible: false,
    });
    this.volume.priceScale().applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
    this.precision = 2;
  }

  setInterval(interval) {
    this.chart.applyOptions({ timeScale: { secondsVisible: interval.endsWith("s") } });
  }

  setCandles(candles) {
    this.fitPrecision(candles);
    this.candles.setData(candles.map(toBar));
    this.volume.setData(candles.map(toVolume));
  }

  // `historical`: the candle is older than the last one (a revision); the library then searches for it.
  updateCandle(candle, historical) {
    this.fitPrecision([candle]);
    this.candles.update(toBar(candle), historical);
    this.volume.update(toVolume(candle), historical);
  }

  // A short history fills the width (bars up to maxBarSpacing wide); a long one shows its newest part.
  fitScroll() {
    const timeScale = this.chart.timeScale();
    if (this.candles.data().length * 12 < timeScale.width()) timeScale.fitContent();
    else timeScale.scrollToRealTime();
  }

  // As many decimals as the prices carry (2 to 8), so the axis shows what the exchange quotes.
  fitPrecision(candles) {
    let precision = this.precision;
    for (const candle of candles) {
      for (const field of ["open", "high", "low", "close"]) precision = Math.max(precision, decimals(candle[field]));
    }
    precision = Math.min(precision, 8);
    if (precision === this.precision) return false;
    this.precision = precision;
    this.applyPrecision();
    return true;
  }

  applyPrecision() {
    this.candles.applyOptions({ priceFormat: { type: "price", precision: this.precision, minMove: 10 ** -this.precision } });
  }

  plotted() {
    return this.candles.data().map((bar) => ({ ...bar }));
  }
}

function toBar(candle) {
  return {
    time: openTimeMs(candle) / 1000,
    open: Number(candle.open),
    high: Number(candle.high),
    low: Number(candle.low),
    close: Number(candle.close),
  };
}

function toVolume(candle) {
  const up = Number(candle.close) >= Number(candle.open);
  return { time: openTimeMs(candle) / 1000, value: Number(candle.volume), color: up ? UP_VOLUME : DOWN_VOLUME };
}
