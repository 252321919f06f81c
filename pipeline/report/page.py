"""The report's HTML: sections of text, figures and tables in one file with its style and script
inline, nothing fetched from a network. Tables carry their rows as JSON and are paged, sorted and
filtered in the page, so 10,000 videos cost a few MB and open at once; the script records any error
and whether every image loaded (`data-errors`, `data-images` on <body>), for people and for tests."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
header{background:#1d3557;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
nav{background:#fff;border-bottom:1px solid #ddd;padding:6px 24px;position:sticky;top:0}nav a{margin-right:14px}
main{padding:8px 24px 40px}section{margin:18px 0 28px}h2{border-bottom:2px solid #1d3557;padding-bottom:3px}
.grid{display:flex;flex-wrap:wrap;gap:14px}.grid figure{margin:0;background:#fff;border:1px solid #e3e3e3;padding:6px}
figcaption{font-size:12px;color:#555;max-width:420px}.note{color:#555}.missing{color:#a33}
table{border-collapse:collapse;background:#fff;font-size:12.5px}td,th{border:1px solid #ddd;padding:3px 7px;text-align:left}
th{background:#eef1f6;cursor:pointer;white-space:nowrap}th.sorted-asc:after{content:" \\25B2"}th.sorted-desc:after{content:" \\25BC"}
.tools{margin:6px 0}.tools input{width:260px}.tools button{margin-left:6px}.num{text-align:right;font-variant-numeric:tabular-nums}
.counts td:first-child{font-weight:600}.strip img{display:block;max-width:100%}
"""

SCRIPT = """
(function(){
  var errors=[];
  window.addEventListener('error',function(e){errors.push(String(e.message||e.type));document.body.dataset.errors=JSON.stringify(errors);},true);
  function cell(v){return v===null||v===undefined?'':(typeof v==='number'&&!Number.isInteger(v)?v.toFixed(3):String(v));}
  function setup(box){
    var spec=JSON.parse(box.querySelector('script[type="application/json"]').textContent);
    var rows=spec.rows,shown=rows,page=0,per=spec.page_rows,key=-1,dir=1;
    var tools=document.createElement('div');tools.className='tools';
    var filter=document.createElement('input');filter.placeholder='filter ('+rows.length+' rows)';
    var prev=document.createElement('button');prev.textContent='previous';
    var next=document.createElement('button');next.textContent='next';
    var where=document.createElement('span');where.className='note';
    tools.append(filter,prev,next,' ',where);box.appendChild(tools);
    var table=document.createElement('table');var head=table.createTHead().insertRow();var body=table.createTBody();
    spec.columns.forEach(function(name,i){var th=document.createElement('th');th.textContent=name;
      th.onclick=function(){dir=(key===i)?-dir:1;key=i;sort();draw();
        head.querySelectorAll('th').forEach(function(t){t.className='';});th.className=dir>0?'sorted-asc':'sorted-desc';};head.appendChild(th);});
    box.appendChild(table);
    function sort(){if(key<0)return;shown=shown.slice().sort(function(a,b){var x=a[key],y=b[key];
      if(x===y)return 0;if(x===null)return 1;if(y===null)return -1;return (x<y?-1:1)*dir;});}
    function draw(){body.innerHTML='';var pages=Math.max(1,Math.ceil(shown.length/per));page=Math.min(page,pages-1);
      shown.slice(page*per,(page+1)*per).forEach(function(r){var tr=body.insertRow();
        r.forEach(function(v){var td=tr.insertCell();td.textContent=cell(v);if(typeof v==='number')td.className='num';});});
      where.textContent='page '+(page+1)+' of '+pages+', '+shown.length+' rows';prev.disabled=page===0;next.disabled=page>=pages-1;}
    filter.oninput=function(){var q=filter.value.toLowerCase();page=0;
      shown=rows.filter(function(r){return r.some(function(v){return cell(v).toLowerCase().indexOf(q)>=0;});});sort();draw();};
    prev.onclick=function(){page--;draw();};next.onclick=function(){page++;draw();};draw();
  }
  document.addEventListener('DOMContentLoaded',function(){
    document.body.dataset.errors=JSON.stringify(errors);
    document.querySelectorAll('.table').forEach(function(box){try{setup(box);}catch(e){errors.push('table '+box.id+': '+e);document.body.dataset.errors=JSON.stringify(errors);}});
  });
  window.addEventListener('load',function(){
    var images=Array.prototype.slice.call(document.images);
    var bad=images.filter(function(i){return !(i.complete&&i.naturalWidth>0);}).map(function(i){return i.getAttribute('src');});
    document.body.dataset.images=JSON.stringify({total:images.length,failed:bad});
  });
})();
"""


@dataclass
class Section:
    """One part of the page: an anchor id, a title and its HTML body."""

    id: str
    title: str
    parts: list[str] = field(default_factory=list)

    def text(self, words: str, css: str = "note") -> None:
        self.parts.append(f'<p class="{css}">{html.escape(words)}</p>')

    def figures(self, items: Sequence[tuple[str, str]]) -> None:
        """(inline SVG or <img> HTML, caption) pairs, side by side."""
        cells = "".join(f"<figure>{body}<figcaption>{html.escape(caption)}</figcaption></figure>" for body, caption in items)
        self.parts.append(f'<div class="grid">{cells}</div>')

    def counts(self, pairs: Sequence[tuple[str, Any]]) -> None:
        rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td class=\"num\">{html.escape(str(v))}</td></tr>" for k, v in pairs)
        self.parts.append(f'<table class="counts">{rows}</table>')

    def table(self, id: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, page_rows: int) -> None:
        """A table paged, sorted and filtered in the page; its rows as JSON ("</" escaped)."""
        spec = json.dumps({"columns": list(columns), "rows": [[_plain(v) for v in r] for r in rows], "page_rows": page_rows},
                          separators=(",", ":"), allow_nan=False, default=str).replace("</", "<\\/")  # fmt: skip
        self.parts.append(f'<div class="table" id="{html.escape(id)}"><script type="application/json">{spec}</script></div>')


def _plain(value: Any) -> Any:
    """A table cell as JSON holds it: numpy scalars as Python's, floats to 4 significant digits, NaN as empty."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return None if value != value or value in (float("inf"), float("-inf")) else float(f"{value:.4g}")
    return value


def image(src: str, alt: str) -> str:
    return f'<img src="{html.escape(src)}" alt="{html.escape(alt)}" loading="eager">'


def render(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """The whole page."""
    nav = "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>{"".join(s.parts)}</section>' for s in sections)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{STYLE}</style>'
            f'<script>{SCRIPT}</script></head><body><header><h1>{html.escape(title)}</h1><div>{html.escape(subtitle)}</div></header>'
            f"<nav>{nav}</nav><main>{body}</main></body></html>")  # fmt: skip
