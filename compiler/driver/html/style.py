"""The report's inline stylesheet (no external CSS, no fonts fetched: it opens from a USB stick)."""

CSS = """
:root { --ok: #1b7f3b; --warn: #b06d00; --bad: #b3261e; --ink: #1d1d1f; --mute: #5f6368; --line: #d9dce1;
        --bg: #ffffff; --panel: #f6f7f9; --int4: #6a1b9a; --int8: #1565c0; --int16: #00838f; --fp16: #ef6c00;
        --fp32: #757575; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif;
       color: var(--ink); background: var(--bg); }
header { padding: 18px 28px; background: #20232a; color: #fff; }
header h1 { margin: 0 0 4px; font-size: 20px; font-weight: 600; word-break: break-all; }
header .sub { color: #c8ccd2; font-size: 13px; }
nav { padding: 8px 28px; background: var(--panel); border-bottom: 1px solid var(--line); font-size: 13px; }
nav a { margin-right: 14px; color: #1a57b5; text-decoration: none; }
main { padding: 8px 28px 40px; max-width: 1240px; }
section { margin-top: 22px; }
h2 { font-size: 17px; margin: 0 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 14px; margin: 14px 0 6px; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: var(--panel); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.name, code { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px;
                word-break: break-all; }
pre { background: var(--panel); border: 1px solid var(--line); padding: 10px; overflow-x: auto;
      font-size: 12px; white-space: pre-wrap; word-break: break-all; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff; font-weight: 600;
         font-size: 12px; }
.pass { background: var(--ok); } .fail { background: var(--bad); } .warn { background: var(--warn); }
.info { background: var(--mute); }
.verdict { font-size: 15px; padding: 10px 14px; border-radius: 6px; border: 1px solid var(--line);
           background: var(--panel); margin: 8px 0; }
.p-int4 { background: var(--int4); } .p-int8 { background: var(--int8); }
.p-int16 { background: var(--int16); }
.p-fp16 { background: var(--fp16); } .p-fp32 { background: var(--fp32); }
.p-integer { background: var(--mute); }
.muted { color: var(--mute); font-size: 12px; }
.grid { display: flex; flex-wrap: wrap; gap: 14px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; background: #fff;
        width: 384px; }
.card .title { font-family: "DejaVu Sans Mono", Menlo, monospace; font-size: 12px; word-break: break-all;
               max-width: 360px; }
details > summary { cursor: pointer; color: #1a57b5; margin: 4px 0; }
ul.warnings li { margin: 2px 0; }
"""
