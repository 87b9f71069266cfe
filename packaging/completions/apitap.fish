complete -c apitap -s i -l interface -d 'Capture live from IFACE (libpcap; `any` works)' -r
complete -c apitap -s r -l read -d 'Read a pcap or pcapng file (`-` = stdin; gzip or zstd compressed too) as fast as possible, then exit' -r
complete -c apitap -s f -l filter -d 'Capture filter (BPF), live or on a file read with -r. Default: tcp' -r
complete -c apitap -l config.file -d 'TOML configuration file; dotted flags are tables (`[web] listen-address`)' -r -F
complete -c apitap -l web.listen-address -d 'Serve /metrics, /-/healthy, /-/ready and a landing page at ADDR' -r
complete -c apitap -l web.config.file -d 'TLS and basic auth for the listener (exporter-toolkit web-config format); re-read when it or its certificates change' -r -F
complete -c apitap -l exchanges -d 'Write the exchange log (NDJSON) to PATH; `-` = stdout' -r
complete -c apitap -l findings -d 'Write the findings log (NDJSON) to PATH; `-` = stdout' -r
complete -c apitap -l metrics-out -d 'At exit, write the final Prometheus text exposition to PATH; `-` = stdout' -r
complete -c apitap -l transaction-timeout -d 'Seconds a request may wait for its response (default 30)' -r
complete -c apitap -l replay-speed -d 'With -r: pace packets at X times real time' -r
complete -c apitap -l workers -d 'Worker threads for reassembly and HTTP parsing (default: the number of CPUs; 1 = everything on one thread)' -r
complete -c apitap -l log.level -d 'Log level: error, warn, info, debug' -r
complete -c apitap -l log.format -d 'Log format: logfmt or json' -r
complete -c apitap -l generate -d 'Print the man page (`man`) or a shell completion script (`bash`, `zsh`, `fish`) and exit; used by packaging' -r -f -a "man\t''
bash\t''
zsh\t''
fish\t''"
complete -c apitap -l replay-loop -d 'With -r: start again at the end of the file, shifting timestamps'
complete -c apitap -s h -l help -d 'Print help (see more with \'--help\')'
complete -c apitap -s V -l version -d 'Print version'
