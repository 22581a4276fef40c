package main

import (
	"os/exec"
	"strconv"
	"testing"

	"github.com/siftmesh/sift/plugins"
	"github.com/siftmesh/sift/plugins/plugintest"
)

func TestRealMosquittoPub(t *testing.T) {
	pub := plugintest.Binary(t, "mosquitto_pub", "mosquitto-clients")
	for _, tc := range []struct{ version, want string }{{"mqttv311", "3.1.1"}, {"mqttv5", "5"}, {"mqttv31", "3.1"}} {
		got := plugintest.Capture(t, func(host string, port int) *exec.Cmd {
			return exec.Command(pub, "-h", host, "-p", strconv.Itoa(port), "-V", tc.version, "-t", "shop/orders", "-m", "hello")
		})
		r := plugintest.Replay(t, sniffer{}, got)
		if r.Verdict != plugins.Match || r.Attributes["version"] != tc.want {
			t.Errorf("mosquitto_pub -V %s sent %q: %v %v, want an MQTT %s match", tc.version, got, r.Verdict, r.Attributes, tc.want)
		}
	}
}

func TestSniff(t *testing.T) {
	tests := []struct {
		in   string
		want plugins.Verdict
	}{
		{"\x10\x13\x00\x04MQTT\x04\x02\x00\x3c\x00\x07client1", plugins.Match},
		{"\x10\x13\x00\x04MQ", plugins.NeedMore},
		{"\x10", plugins.NeedMore},
		{"\x10\x80", plugins.NeedMore},
		{"\x10\x13\x00\x04MQTX", plugins.NoMatch},
		{"\x10\x13\x00\x04MQTT\x09", plugins.NoMatch}, // unknown level
		{"\x20\x02\x00\x00", plugins.NoMatch},         // CONNACK
		{"\x10\x80\x80\x80\x80\x01", plugins.NoMatch}, // remaining length too long
		{"\x10\x02\x00\x04MQTT\x04", plugins.NoMatch}, // remaining length too short for the header
		{"GET / HTTP/1.1\r\n", plugins.NoMatch},
	}
	for _, tt := range tests {
		if got := (sniffer{}).Sniff([]byte(tt.in), false); got.Verdict != tt.want {
			t.Errorf("Sniff(%q) = %v, want %v", tt.in, got.Verdict, tt.want)
		}
	}
}

func FuzzSniff(f *testing.F) {
	f.Add([]byte("\x10\x13\x00\x04MQTT\x04\x02\x00\x3c\x00\x07client1"))
	f.Add([]byte("\x10\x13\x00\x06MQIsdp\x03\x02\x00\x3c"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := plugins.Replay(sniffer{}, b, 0); err != nil {
			t.Fatal(err)
		}
	})
}
