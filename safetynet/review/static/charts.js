// Charts of the review app: data from /api/v1/stats (same session and scope), drawn with the
// locally served ECharts. No inline script (the CSP forbids it).
(function () {
  function bar(el, names, values, extra) {
    var c = echarts.init(document.getElementById(el));
    c.setOption(Object.assign({
      tooltip: {}, grid: {left: 140, right: 20, top: 10, bottom: 30},
      xAxis: {type: "value"}, yAxis: {type: "category", data: names, inverse: true},
      series: [{type: "bar", data: values, itemStyle: {color: "#c0392b"}}]
    }, extra || {}));
    return c;
  }
  fetch("/api/v1/stats", {credentials: "same-origin"}).then(function (r) { return r.json(); }).then(function (s) {
    var charts = [];
    var area = s.area_level === "community" ? s.by_community : s.by_street;
    document.getElementById("title-area").textContent = s.area_level === "community" ? "各社区（村）预警数" : "各街道（乡镇）预警数";
    charts.push(bar("chart-street", area.map(function (x) { return x.name; }), area.map(function (x) { return x.count; })));
    charts.push(bar("chart-rule", s.by_rule.map(function (x) { return x.name; }), s.by_rule.map(function (x) { return x.count; })));
    var t = echarts.init(document.getElementById("chart-time"));
    t.setOption({tooltip: {trigger: "axis"}, legend: {}, xAxis: {type: "category", data: s.over_time.dates},
      yAxis: {type: "value"}, series: Object.keys(s.over_time.series).map(function (k) {
        var color = {S1: "#b71c1c", S2: "#e67e22", S3: "#7f8c8d"}[k.slice(0, 2)];
        return {name: k, type: "line", stack: "all", areaStyle: {}, data: s.over_time.series[k],
                itemStyle: {color: color}, lineStyle: {color: color}}; })});
    charts.push(t);
    var p = echarts.init(document.getElementById("chart-progress"));
    p.setOption({tooltip: {trigger: "axis"}, legend: {}, grid: {left: 140, right: 20, top: 30, bottom: 30},
      xAxis: {type: "value"}, yAxis: {type: "category", inverse: true, data: s.progress.map(function (x) { return x.name; })},
      series: [
        {name: "已处置", type: "bar", stack: "p", data: s.progress.map(function (x) { return x.handled; }), itemStyle: {color: "#27ae60"}},
        {name: "未处置", type: "bar", stack: "p", data: s.progress.map(function (x) { return x.total - x.handled; }), itemStyle: {color: "#bdc3c7"}}
      ]});
    charts.push(p);
    document.body.setAttribute("data-charts-ready", "1");
    window.addEventListener("resize", function () { charts.forEach(function (c) { c.resize(); }); });
  });
})();
