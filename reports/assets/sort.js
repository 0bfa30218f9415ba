// Sortable tables: a click on a column header of a `table.sortable` sorts its rows by that column,
// a second click reverses them. A cell's data-sort attribute, where present, is its key (the raw
// number behind "×812" or "135M"); a column whose keys are all numbers sorts numerically, and
// empty keys go last either way. Headers become buttons, so the keyboard sorts too.
(function () {
  "use strict";

  function key(row, column) {
    var cell = row.cells[column];
    if (!cell) return "";
    return (cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent).trim();
  }

  function number(text) {
    return text === "" ? NaN : Number(text.replace(/,/g, ""));
  }

  function compare(numeric, direction) {
    return function (a, b) {
      if (a.key === "" || b.key === "") return (a.key === "") - (b.key === "");  // empty last
      var order = numeric ? number(a.key) - number(b.key) : a.key.localeCompare(b.key, undefined, { numeric: true });
      return direction * order;
    };
  }

  function sort(table, header) {
    var column = header.cellIndex;
    var direction = header.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    var body = table.tBodies[0];
    var rows = Array.prototype.filter.call(body.rows, function (row) { return !row.querySelector("td.empty"); });
    var keyed = rows.map(function (row) { return { row: row, key: key(row, column) }; });
    var numeric = keyed.every(function (k) { return k.key === "" || !isNaN(number(k.key)); });
    keyed.sort(compare(numeric, direction));
    keyed.forEach(function (k) { body.appendChild(k.row); });
    Array.prototype.forEach.call(header.parentNode.cells, function (th) { th.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", direction === 1 ? "ascending" : "descending");
  }

  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    if (!table.tHead || !table.tBodies.length) return;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (header) {
      var button = document.createElement("button");
      button.type = "button";
      while (header.firstChild) button.appendChild(header.firstChild);
      header.appendChild(button);
      button.addEventListener("click", function () { sort(table, header); });
    });
  });
})();
