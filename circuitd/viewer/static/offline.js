/* The offline page's start: the graph embedded in the page, drawn into #viewer; the test hooks
 * are window.circuitdViewer and document.body.dataset.ready ("1" after the first full render). */
(function () {
  "use strict";
  var doc = JSON.parse(document.getElementById("circuitd-graph").textContent);
  window.circuitdViewer = CircuitdViewer.mount(document.getElementById("viewer"), doc, {
    onDraw: function () { document.body.dataset.ready = "1"; }
  });
})();
