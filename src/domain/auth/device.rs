//! What kind of device a session runs on, read from its user agent.

use woothee::parser::Parser;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// `desktop`, `mobile`, `tablet`, `bot` or `unknown`.
    pub device_type: &'static str,
    pub os: String,
    pub browser: String,
}

pub fn describe(user_agent: Option<&str>) -> Device {
    let unknown = Device {
        device_type: "unknown",
        os: "unknown".to_owned(),
        browser: "unknown".to_owned(),
    };
    let Some(parsed) = user_agent.and_then(|agent| Parser::new().parse(agent)) else {
        return unknown;
    };
    let tablet = ["iPad", "Android Tablet"].contains(&parsed.os)
        || user_agent.is_some_and(|agent| agent.contains("Tablet"));
    let device_type = match parsed.category {
        "crawler" => "bot",
        "smartphone" | "mobilephone" if tablet => "tablet",
        "smartphone" | "mobilephone" => "mobile",
        "pc" => "desktop",
        _ => "unknown",
    };
    let known = |value: &str| {
        if value.is_empty() || value == "UNKNOWN" {
            "unknown".to_owned()
        } else {
            value.to_owned()
        }
    };
    Device {
        device_type,
        os: known(parsed.os),
        browser: known(parsed.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_common_agents() {
        let desktop = describe(Some(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/120.0.0.0 Safari/537.36",
        ));
        assert_eq!(desktop.device_type, "desktop");
        assert_eq!(desktop.browser, "Chrome");
        assert_eq!(desktop.os, "Windows 10");

        let phone = describe(Some(
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 \
             (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
        ));
        assert_eq!(phone.device_type, "mobile");
        assert_eq!(phone.os, "iPhone");

        let tablet = describe(Some(
            "Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like \
             Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
        ));
        assert_eq!(tablet.device_type, "tablet");

        let bot = describe(Some(
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        ));
        assert_eq!(bot.device_type, "bot");

        assert_eq!(describe(None).device_type, "unknown");
        assert_eq!(describe(Some("grpc-rust/0.14")).device_type, "unknown");
    }
}
