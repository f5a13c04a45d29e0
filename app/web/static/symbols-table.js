// The table of symbols. Cells are written only when their text changes, so a render costs what changed.

export const COLUMNS = [
  { field: "symbol", label: "Symbol" },
  { field: "price", label: "Last price", numeric: true },
  { field: "quantity", label: "Quantity", numeric: true },
  { field: "trade_time", label: "Trade time (UTC)" },
  { field: "age", label: "Age", numeric: true },
  { field: "rate", label: "Trades/s", numeric: true },
  { field: "gaps_found", label: "Gaps found", numeric: true },
  { field: "gaps_repaired", label: "Repaired", numeric: true },
  { field: "unrepaired", label: "Unrepaired", numeric: true },
  { field: "backfilling", label: "Backfilling" },
];

export function formatAge(seconds) {
  if (seconds === null) return "–";
  if (seconds < 10) return `${seconds.toFixed(1)} s`;
  if (seconds < 120) return `${Math.floor(seconds)} s`;
  if (seconds < 7200) return `${Math.floor(seconds / 60)} min`;
  return `${Math.floor(seconds / 3600)} h`;
}

export class SymbolsTable {
  constructor(table, onSelect) {
    this.body = table.tBodies[0];
    this.rows = new Map();
    table.tHead.rows[0].replaceChildren(...COLUMNS.map((column) => {
      const cell = document.createElement("th");
      cell.textContent = column.label;
      cell.scope = "col";
      if (column.numeric) cell.className = "numeric";
      return cell;
    }));
    this.body.addEventListener("click", (event) => {
      const row = event.target.closest("tr[data-symbol]");
      if (row !== null) onSelect(row.dataset.symbol);
    });
  }

  // `views`: [{symbol, cells: {field: text}, stale, unrepaired, gapsTitle, direction, tradeId}] in display order.
  render(views, selected) {
    const wanted = new Set(views.map((view) => view.symbol));
    for (const [symbol, row] of this.rows) {
      if (!wanted.has(symbol)) {
        row.element.remove();
        this.rows.delete(symbol);
      }
    }
    views.forEach((view, index) => {
      const row = this.rows.get(view.symbol) ?? this.addRow(view.symbol);
      if (this.body.rows[index] !== row.element) this.body.insertBefore(row.element, this.body.rows[index] ?? null);
      for (const column of COLUMNS) {
        const text = view.cells[column.field] ?? "–";
        if (row.texts[column.field] !== text) {
          row.cells[column.field].textContent = text;
          row.texts[column.field] = text;
        }
      }
      const element = row.element;
      element.classList.toggle("selected", view.symbol === selected);
      element.setAttribute("aria-selected", String(view.symbol === selected));
      element.classList.toggle("stale", view.stale);
      element.classList.toggle("has-gaps", view.unrepaired > 0);
      element.classList.toggle("backfilling", view.cells.backfilling === "yes");
      if (row.cells.unrepaired.title !== view.gapsTitle) row.cells.unrepaired.title = view.gapsTitle;
      if (view.direction !== row.direction) {
        row.cells.price.dataset.direction = view.direction;
        row.direction = view.direction;
      }
      const tradeId = view.tradeId === null ? "" : String(view.tradeId);
      if (element.dataset.tradeId !== tradeId) element.dataset.tradeId = tradeId;
    });
  }

  addRow(symbol) {
    const element = document.createElement("tr");
    element.dataset.symbol = symbol;
    const cells = {};
    for (const column of COLUMNS) {
      const cell = document.createElement(column.field === "symbol" ? "th" : "td");
      if (column.field === "symbol") cell.scope = "row";
      cell.dataset.field = column.field;
      if (column.numeric) cell.className = "numeric";
      element.append(cell);
      cells[column.field] = cell;
    }
    const row = { element, cells, texts: {}, direction: "" };
    this.rows.set(symbol, row);
    this.body.append(element);
    return row;
  }
}
